"""Dataset overview images: a sample grid and a class-count chart."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import face_like, write_image

from emorec.data import DatasetError, scan_dataset
from emorec.visualize import count_chart, sample_grid, save_overview


@pytest.fixture
def report(tmp_path):
    for i in range(5):
        write_image(tmp_path / "data" / "happy" / f"{i}.png", face_like(i))
    for i in range(2):
        write_image(tmp_path / "data" / "sad" / f"{i}.jpg", face_like(10 + i, channels=3))
    (tmp_path / "data" / "fear").mkdir()  # a class with no images still gets a row and a bar
    return scan_dataset(tmp_path / "data", progress=False)


def test_save_overview_writes_two_decodable_pngs(report, tmp_path):
    grid, chart = save_overview(report, tmp_path / "out" / "samples.png", per_class=4)
    assert grid == tmp_path / "out" / "samples.png"
    assert chart == tmp_path / "out" / "samples_counts.png"
    for path in (grid, chart):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = cv2.imread(str(path))
        assert image is not None and image.shape[0] > 50 and image.shape[1] > 50
        assert image.std() > 0  # not a blank canvas


def test_save_overview_refuses_to_overwrite(report, tmp_path):
    out = tmp_path / "samples.png"
    save_overview(report, out)
    chart_before = (tmp_path / "samples_counts.png").read_bytes()
    with pytest.raises(FileExistsError, match="samples.png"):
        save_overview(report, out, seed=1)
    # Only the chart existing is enough to refuse, and nothing is written then.
    out.unlink()
    with pytest.raises(FileExistsError, match="samples_counts.png"):
        save_overview(report, out)
    assert not out.exists()
    assert (tmp_path / "samples_counts.png").read_bytes() == chart_before
    save_overview(report, out, overwrite=True)
    assert out.is_file()


@pytest.mark.parametrize("name", ["samples.jpg", "samples", "samples.PNG.txt"])
def test_save_overview_rejects_non_png(report, tmp_path, name):
    with pytest.raises(ValueError, match=".png"):
        save_overview(report, tmp_path / name)
    assert list(tmp_path.glob("samples*")) == []


def test_sample_grid_layout(report):
    figure = sample_grid(report, per_class=3, seed=0)
    axes = figure.axes
    assert len(axes) == 3 * 3  # one row per class (fear, happy, sad), three columns
    shown = [len(axis.images) for axis in axes]
    assert shown == [0, 0, 0, 1, 1, 1, 1, 1, 0]  # fear: none, happy: 3 of 5, sad: both
    titles = [axes[row * 3].get_title(loc="left") for row in range(3)]
    assert titles == ["fear (0)", "happy (5)", "sad (2)"]


def test_sample_grid_shows_real_pixels_in_rgb(tmp_path):
    write_image(tmp_path / "d" / "blue" / "b.png", np.full((10, 10, 3), (255, 0, 0), np.uint8))  # BGR blue
    write_image(tmp_path / "d" / "red" / "r.png", np.full((10, 10, 3), (0, 0, 255), np.uint8))
    figure = sample_grid(scan_dataset(tmp_path / "d", progress=False), per_class=1)
    blue, red = (np.asarray(axis.images[0].get_array()) for axis in figure.axes)
    np.testing.assert_array_equal(blue[0, 0], [0, 0, 255])  # displayed as RGB
    np.testing.assert_array_equal(red[0, 0], [255, 0, 0])


def test_count_chart_bars_match_counts(report):
    figure = count_chart(report)
    heights = [patch.get_height() for patch in figure.axes[0].patches]
    assert heights == [0, 5, 2]


def test_save_overview_refuses_a_tree_without_images(tmp_path):
    (tmp_path / "data" / "happy").mkdir(parents=True)
    (tmp_path / "data" / "happy" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="no valid images to show"):
        save_overview(scan_dataset(tmp_path / "data", progress=False), tmp_path / "grid.png")
    assert not list(tmp_path.glob("*.png"))
