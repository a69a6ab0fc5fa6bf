"""The sizing rules: the model's own resize by default, lower caps, many images, byte limits."""

from __future__ import annotations

import pytest

from batcher import facts
from batcher.images.errors import ImageConfigError
from batcher.images.sizing import ImageOptions, check_options, image_tokens, scale_to_edge, target_size
from batcher.models import ModelProfile

DEFAULT = ImageOptions()


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1075, 1520), (924, 1307)),
        ((2000, 1500), (1270, 952)),
        ((3840, 2160), (1456, 819)),
        ((1092, 1092), (1092, 1092)),
        ((200, 200), (200, 200)),
    ],
)
def test_worked_examples_on_a_1568_token_model(
    haiku: ModelProfile, size: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert target_size(haiku, *size, options=DEFAULT) == expected
    assert target_size(haiku, *size, options=DEFAULT) == haiku.native_size(*size)


def test_worked_example_on_a_4784_token_model(opus: ModelProfile) -> None:
    assert target_size(opus, 3840, 2160, options=DEFAULT) == (2576, 1449)
    assert image_tokens(opus, 2576, 1449) == 4784


@pytest.mark.parametrize(("size", "tokens"), [((200, 200), 64), ((1000, 1000), 1296), ((1092, 1092), 1521)])
def test_patch_token_counts(haiku: ModelProfile, size: tuple[int, int], tokens: int) -> None:
    assert image_tokens(haiku, *size) == tokens


def test_target_is_never_resized_again_by_the_model(haiku: ModelProfile, opus: ModelProfile) -> None:
    for profile in (haiku, opus):
        for size in ((4000, 3000), (3000, 4000), (8000, 100), (100, 8000), (1568, 1568), (5000, 5000)):
            target = target_size(profile, *size, options=DEFAULT)
            assert profile.native_size(*target) == target
            assert image_tokens(profile, *target) <= profile.image_token_budget


def test_never_upscales(haiku: ModelProfile) -> None:
    assert target_size(haiku, 50, 30, options=DEFAULT) == (50, 30)
    assert target_size(haiku, 50, 30, options=ImageOptions(max_edge=1000)) == (50, 30)


def test_max_edge_caps_the_long_side_in_pixels(haiku: ModelProfile) -> None:
    assert target_size(haiku, 2000, 1500, options=ImageOptions(max_edge=800)) == (800, 600)
    assert target_size(haiku, 1500, 2000, options=ImageOptions(max_edge=800)) == (600, 800)


def test_max_edge_above_the_model_changes_nothing(haiku: ModelProfile) -> None:
    assert target_size(haiku, 3840, 2160, options=ImageOptions(max_edge=5000)) == (1456, 819)


def test_max_image_tokens_lowers_the_budget(opus: ModelProfile) -> None:
    capped = target_size(opus, 3840, 2160, options=ImageOptions(max_image_tokens=1568))
    assert capped == (1456, 819)
    assert image_tokens(opus, *capped) <= 1568


def test_max_image_tokens_above_the_model_changes_nothing(haiku: ModelProfile) -> None:
    assert target_size(haiku, 3840, 2160, options=ImageOptions(max_image_tokens=99_999)) == (1456, 819)


def test_many_images_fit_2000_px(opus: ModelProfile) -> None:
    few = target_size(opus, 3840, 2160, options=DEFAULT, images_in_request=facts.MANY_IMAGES_THRESHOLD)
    many = target_size(opus, 3840, 2160, options=DEFAULT, images_in_request=facts.MANY_IMAGES_THRESHOLD + 1)
    assert few == (2576, 1449)
    assert max(many) == facts.MANY_IMAGES_EDGE
    assert many == (2000, 1125)


def test_scale_to_edge_keeps_the_ratio_and_floors() -> None:
    assert scale_to_edge(3000, 1001, 1000) == (1000, 333)
    assert scale_to_edge(10, 10_000, 100) == (1, 100)
    assert scale_to_edge(300, 200, 1000) == (300, 200)


def test_byte_limit_defaults_to_the_portable_5_mb(haiku: ModelProfile) -> None:
    assert DEFAULT.max_b64_bytes == facts.PORTABLE_IMAGE_B64_BYTES == 5 * 1024 * 1024
    check_options(haiku, DEFAULT)


def test_byte_limit_may_rise_to_the_models_not_above(haiku: ModelProfile) -> None:
    check_options(haiku, ImageOptions(max_b64_bytes=haiku.max_image_b64_bytes))
    with pytest.raises(ImageConfigError, match=r"max_b64_bytes.*claude-haiku-5-5"):
        check_options(haiku, ImageOptions(max_b64_bytes=haiku.max_image_b64_bytes + 1))


@pytest.mark.parametrize(
    "options",
    [
        ImageOptions(max_edge=0),
        ImageOptions(max_image_tokens=0),
        ImageOptions(jpeg_quality=0),
        ImageOptions(max_pixels=0),
        ImageOptions(timeout_s=0),
        ImageOptions(max_b64_bytes=10),
    ],
)
def test_bad_options_name_the_key(haiku: ModelProfile, options: ImageOptions) -> None:
    with pytest.raises(ImageConfigError, match=r"^images\."):
        check_options(haiku, options)


def test_sizing_imports_no_pillow() -> None:
    import subprocess
    import sys

    code = "import sys, batcher.images.sizing; print('PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
