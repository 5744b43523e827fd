"""List files of the video / image / label / CSV datasets: directories, bare paths, BOMs, empty lists."""

import pytest

import utils.video_io as vio
from tools.datasets.csv_video import CsvVideo
from tools.datasets.image_list import ImageList
from tools.datasets.label_list import LabelList
from tools.datasets.video_list import VideoList, read_list_file
from utils.config import InputError
from utils.video_io import VideoReadError, probe_video, read_video

T, FPS = 30, 10


# ---------------------------------------------------------------------------- directories
def test_directory_is_named_a_directory(tmp_path, shared_data):
    for fn in (read_video, probe_video, vio.read_image):
        with pytest.raises(VideoReadError, match="is a directory, not a (video|image) file"):
            fn(tmp_path)
    (tmp_path / "l.txt").write_text(f"{shared_data / 'videos'}|||a folder\nvideos/realshort.mp4|||ok\n")
    ds = VideoList(str(tmp_path / "l.txt"), data_dir=str(shared_data), num_frames=2, resolution=8,
                   max_bad_fraction=0.5)
    assert ds[0]["meta"]["index"] == 1
    assert "is a directory, not a video file" in ds.bad[0]
    with pytest.raises(InputError, match="is a directory"):
        VideoList(str(tmp_path), num_frames=2)


# ---------------------------------------------------------------------------- list files
def test_bare_path_line_has_empty_caption(tmp_path, shared_data):
    (tmp_path / "l.txt").write_text("videos/realshort.mp4\nvideos/cat_walking.mp4 ||| a cat\n")
    rows = read_list_file(str(tmp_path / "l.txt"), data_dir=str(shared_data))
    assert [(r[1], r[2]) for r in rows] == [("", 1), ("a cat", 2)]
    ds = VideoList(str(tmp_path / "l.txt"), data_dir=str(shared_data), num_frames=2, resolution=8)
    assert ds[0]["caption"] == "" and ds[0]["video"].shape == (3, 2, 8, 8)


def test_utf8_bom_is_not_part_of_the_first_path(tmp_path, shared_data):
    (tmp_path / "l.txt").write_bytes("\ufeffvideos/realshort.mp4|||caf\u00e9\n".encode("utf-8"))
    rows = read_list_file(str(tmp_path / "l.txt"), data_dir=str(shared_data))
    assert rows[0][0] == str(shared_data / "videos" / "realshort.mp4") and rows[0][1] == "caf\u00e9"
    ds = VideoList(str(tmp_path / "l.txt"), data_dir=str(shared_data), num_frames=2, resolution=8,
                   max_bad_fraction=0.0)
    assert ds[0]["meta"]["index"] == 0
    (tmp_path / "v.csv").write_bytes("\ufeffvideo,caption\nvideos/realshort.mp4,x\n".encode("utf-8"))
    assert CsvVideo(str(tmp_path / "v.csv"), data_dir=str(shared_data), num_frames=2).entries[0][1] == "x"


@pytest.mark.parametrize("text", ["", "# only a comment\n\n   \n"])
def test_empty_list_is_an_input_error(tmp_path, text):
    p = tmp_path / "empty.txt"
    p.write_text(text)
    with pytest.raises(InputError, match=r"empty\.txt.*no entries.*\|\|\|"):
        read_list_file(str(p))
    for cls in (VideoList, ImageList, LabelList):
        with pytest.raises(InputError, match="no entries"):
            cls(str(p))
    (tmp_path / "e.csv").write_text("video,caption\n")
    with pytest.raises(InputError, match=r"e\.csv"):
        CsvVideo(str(tmp_path / "e.csv"))


# ---------------------------------------------------------------------------- epochs (C3)
