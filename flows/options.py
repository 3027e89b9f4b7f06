"""Command-line options generated from a request model's fields (`RenderRequest`, `FinetuneRequest`):
one source of truth for names, types, choices, defaults, help and validation.

Every field `foo_bar` becomes `--foo-bar` (booleans `--foo-bar/--no-foo-bar`); an option left out
keeps the request's default, and the request model validates the whole (cross-field rules
included), so the CLI, the UI form and the inbox accept exactly the same settings.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .request import RenderRequest

# Extra option names kept for the command line's habits.
ALIASES = {"output_format": ("--format",)}


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _option_type(annotation):
    """The annotation typer is given: a list of choices (`list[Literal[...]]`, which typer cannot
    take) becomes a repeated string option, the request model checking the choices."""
    if get_origin(annotation) is list and get_origin(get_args(annotation)[0]) is Literal:
        return list[str]
    return annotation


def _help(model: type[BaseModel], name: str) -> str:
    info = model.model_fields[name]
    if get_origin(info.annotation) is list:  # a list of choices with a fixed default
        choices = get_args(get_args(info.annotation)[0])
        return (f"{info.description} Repeat the option for several (choices: {', '.join(choices)}) "
                f"[default: {' '.join(info.get_default(call_default_factory=True))}]")
    if info.default_factory is not None:
        default = "from the environment, see `controlnext-video settings`"
    elif info.default in ("", PydanticUndefined):
        default = None
    else:
        default = info.default
    return (info.description or "") + (f" [default: {default}]" if default is not None else "")


def request_parameters(fields: Iterable[str], required: Iterable[str] = (),
                       model: type[BaseModel] = RenderRequest) -> list[inspect.Parameter]:
    """Keyword parameters (typer options) for the given fields of a request model, in the given order."""
    required = set(required)
    params = []
    for name in fields:
        info = model.model_fields[name]
        flag = option_name(name)
        names = (f"{flag}/--no-{flag[2:]}",) if info.annotation is bool else (flag, *ALIASES.get(name, ()))
        option = typer.Option(*names, help=_help(model, name), show_default=False)
        annotation = _option_type(info.annotation)
        annotation = annotation if name in required else annotation | None
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                        default=... if name in required else None,
                                        annotation=Annotated[annotation, option]))
    return params


def with_request_options(fields: Iterable[str], required: Iterable[str] = (),
                         extra: Iterable[inspect.Parameter] = (),
                         model: type[BaseModel] = RenderRequest) -> Callable[[Callable], Callable]:
    """Decorate a command taking `**options` so typer sees one option per request field (plus `extra`)."""
    def decorate(function: Callable) -> Callable:
        function.__signature__ = inspect.Signature([*extra, *request_parameters(fields, required, model)])
        return function
    return decorate


def request_from_options(options: dict[str, Any], schema: type[BaseModel] = RenderRequest, /, **overrides: Any):
    """The request (a `schema` instance) for the options given (None: left out) and the overrides,
    validated; a clear error and exit 2 if not."""
    from pydantic import ValidationError

    values = {k: v for k, v in options.items() if v is not None and k in schema.model_fields}
    values.update(overrides)
    try:
        return schema(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{option_name(str(e['loc'][0])) if e['loc'] else 'request'}: {e['msg']}"
                             for e in exc.errors())
        typer.echo(f"error: invalid options: {problems}", err=True)
        raise typer.Exit(code=2) from exc
