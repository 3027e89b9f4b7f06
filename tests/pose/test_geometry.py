import numpy as np
import pytest

from pose.errors import PoseInputError
from pose.geometry import cover_crop, cover_crop_image


@pytest.mark.parametrize(
    "src, expected",
    [
        ((512, 512), (1024, 1024, 224, 0)),  # square -> 576x1024: fit height, crop sides
        ((1920, 1080), (1821, 1024, 622, 0)),  # landscape: ceil(1024 * 16/9) = 1821
        ((500, 2000), (576, 2304, 0, 640)),  # tall: fit width, crop top and bottom
    ],
)
def test_cover_crop_geometry(src, expected):
    g = cover_crop(*src, 576, 1024)
    assert (g.resized_width, g.resized_height, g.left, g.top) == expected


def test_points_follow_the_image_crop(astronaut):
    img = astronaut.copy()
    img[100:104, 300:304] = (255, 0, 255)  # a marker
    out = cover_crop_image(img, 1024, 576)
    g = cover_crop(512, 512, 576, 1024)
    x, y, _ = g.points_to_output(np.array([302 / 512, 102 / 512, 1.0]))
    ys, xs = np.nonzero((out[:, :, 0] > 200) & (out[:, :, 1] < 80) & (out[:, :, 2] > 200))
    assert abs(xs.mean() - x * 576) < 1.5 and abs(ys.mean() - y * 1024) < 1.5


def test_cover_crop_rejects_bad_sizes():
    with pytest.raises(PoseInputError, match="width must be a positive integer"):
        cover_crop(512, 512, 0, 1024)
