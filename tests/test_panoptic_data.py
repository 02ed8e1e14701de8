"""``--data coco-panoptic:PANOPTIC.json:IMAGE_DIR[:PNG_DIR]``: a generated COCO panoptic set (PNGs of segment ids with
a crowd segment and void pixels) loaded into detection, semantic and panoptic targets; its error paths."""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vovnet.data.coco import AnnotationError
from vovnet.data.detection import detection_transforms, open_dataset, without_crowd
from vovnet.data.panoptic import CocoPanopticDataset, PanopticClasses, parse_panoptic_spec, rgb_to_id
from vovnet.errors import DataError, UsageError

# Category ids with gaps, things and stuff interleaved, as COCO's.
CATEGORIES = [
    {"id": 1, "name": "circle", "isthing": 1},
    {"id": 3, "name": "sky-other-merged", "isthing": 0},
    {"id": 4, "name": "square", "isthing": 1},
    {"id": 9, "name": "grass-merged", "isthing": 0},
]
THINGS, STUFF = ["circle", "square"], ["sky", "grass"]
H, W = 48, 64


def _scene(k: int) -> tuple[np.ndarray, list[dict]]:
    """Image ``k``'s segment ids ``[H, W]`` and segments_info: sky above, grass below, a void band, two circles, a
    square, and in image 0 a crowd region of squares."""
    ids = np.zeros((H, W), dtype=np.int64)
    segments = []

    def put(sid, category, rows, cols, iscrowd=0):
        ids[rows, cols] = sid
        segments.append({"id": sid, "category_id": category, "iscrowd": iscrowd})

    put(1 + 256 * 3, 3, slice(0, H // 2), slice(None))  # ids that need two of the PNG's channels
    put(2 + 256**2 * 5, 9, slice(H // 2, H), slice(None))
    ids[H // 2 - 2 : H // 2, :] = 0  # void between sky and grass
    put(11, 1, slice(4, 14), slice(4 + 2 * k, 16 + 2 * k))
    put(12, 1, slice(30, 40), slice(40, 52))
    put(13, 4, slice(6, 18), slice(30, 44))
    if k == 0:
        put(14, 4, slice(34, 46), slice(4, 24), iscrowd=1)
    for s in segments:
        ys, xs = np.nonzero(ids == s["id"])
        s["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        s["area"] = int((ids == s["id"]).sum())
    return ids, segments


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2], axis=-1).astype(np.uint8)


def write_panoptic_set(root, n: int = 3) -> dict:
    """COCO's layout: ``images/``, ``annotations/panoptic.json`` and ``annotations/panoptic/`` PNGs. The image shows
    each segment in a colour of its category, so a model can learn it."""
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "panoptic").mkdir(parents=True)
    colours = {1: (220, 40, 40), 3: (90, 150, 250), 4: (40, 200, 60), 9: (30, 110, 30)}
    images, annotations = [], []
    for k in range(n):
        ids, segments = _scene(k)
        picture = np.zeros((H, W, 3), dtype=np.uint8)
        for s in segments:
            picture[ids == s["id"]] = colours[s["category_id"]]
        Image.fromarray(picture).save(root / "images" / f"{k:03d}.png")
        Image.fromarray(id_to_rgb(ids)).save(root / "annotations" / "panoptic" / f"{k:03d}.png")
        images.append({"id": k, "file_name": f"{k:03d}.png", "height": H, "width": W})
        annotations.append({"image_id": k, "file_name": f"{k:03d}.png", "segments_info": segments})
    data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations" / "panoptic.json").write_text(json.dumps(data))
    return data


def spec(root) -> str:
    return f"coco-panoptic:{root}/annotations/panoptic.json:{root}/images"


@pytest.fixture
def panoptic_set(tmp_path):
    write_panoptic_set(tmp_path)
    return tmp_path


def test_spec_png_folder_defaults_to_the_json_stem():
    assert parse_panoptic_spec("coco-panoptic:a/panoptic_val2017.json:img") == ("a/panoptic_val2017.json", "img", "a/panoptic_val2017")
    assert parse_panoptic_spec("coco-panoptic:a.json:img:pngs") == ("a.json", "img", "pngs")
    for bad in ("coco-panoptic:a.json", "coco-panoptic:a.json::p", "coco-panoptic:a:b:c:d"):
        with pytest.raises(UsageError, match="coco-panoptic:PANOPTIC.json:IMAGE_DIR"):
            parse_panoptic_spec(bad)


def test_rgb_to_id():
    ids = np.array([[0, 1, 256, 256**2 + 7, 256**3 - 1]])
    assert np.array_equal(rgb_to_id(id_to_rgb(ids)), ids)


def test_targets_instances_semantic_and_panoptic(panoptic_set):
    data = open_dataset(spec(panoptic_set), "val", image_size=64, seed=0, strict=True, train=False)
    assert isinstance(data, CocoPanopticDataset) and len(data) == 3 and data.has_masks
    assert isinstance(data.class_names, PanopticClasses)
    assert list(data.class_names) == THINGS and data.class_names.stuff == tuple(STUFF)
    assert pickle.loads(pickle.dumps(data.class_names)).stuff == tuple(STUFF)  # loader processes and DDP ranks get both
    assert data.report.to_dict() == {"images": 3, "annotations": 16, "negatives": 0, "skipped": {}}

    image, target = data[0]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    ids, _ = _scene(0)
    # things as instances: circle, circle, square, crowd square; labels over the things in id order
    assert target["labels"].tolist() == [1, 1, 2, 2] and target["iscrowd"].tolist() == [0, 0, 0, 1]
    assert target["masks"].shape == (4, H, W) and target["masks"].sum((1, 2)).tolist() == [120, 120, 168, 240]
    assert target["boxes"].tolist()[0] == [4.0, 4.0, 16.0, 14.0]  # the mask's tight box, x2 = last column + 1
    # semantic: sky 1, grass 2, every thing pixel 0 (the crowd's too), void 255
    sem = target["sem_seg"]
    assert sem.dtype == torch.uint8 and sem.shape == (H, W)
    assert sem[0, 0] == 1 and sem[H - 1, W - 1] == 2 and sem[H // 2 - 1, 0] == 255
    assert sem[5, 5] == 0 and sem[40, 10] == 0
    counts = torch.bincount(sem.flatten().long(), minlength=256)
    assert counts[0].item() == 120 + 120 + 168 + 240 and counts[255].item() == 2 * W
    assert counts[1].item() + counts[2].item() + counts[0].item() + counts[255].item() == H * W
    # panoptic: the ids as written, and rows (id, category, iscrowd) with things 0..1, stuff 2..3
    assert torch.equal(target["panoptic"], torch.from_numpy(ids))
    assert target["segments"].tolist() == [[769, 2, 0], [327682, 3, 0], [11, 0, 0], [12, 0, 0], [13, 1, 0], [14, 1, 1]]
    # training leaves the crowd region out
    kept = without_crowd(target)
    assert kept["labels"].tolist() == [1, 1, 2] and kept["masks"].shape[0] == 3 and kept["boxes"].shape == (3, 4)
    assert kept["sem_seg"] is target["sem_seg"]


def test_a_flip_moves_masks_and_maps_with_the_image(panoptic_set):
    plain = CocoPanopticDataset(f"{panoptic_set}/annotations/panoptic.json", panoptic_set / "images",
                                panoptic_set / "annotations" / "panoptic", transforms=detection_transforms(False, sanitize=False))
    flipping = CocoPanopticDataset(f"{panoptic_set}/annotations/panoptic.json", panoptic_set / "images",
                                   panoptic_set / "annotations" / "panoptic", transforms=detection_transforms(True, sanitize=False))
    image, target = plain[0]
    for seed in range(8):  # some draws flip
        torch.manual_seed(seed)
        got_image, got = flipping[0]
        if torch.equal(got_image, image):
            continue
        assert torch.equal(got_image, image.flip(-1))
        for key in ("sem_seg", "panoptic", "masks"):
            assert torch.equal(got[key], target[key].flip(-1)), key
        assert got["boxes"].tolist()[0] == [W - 16.0, 4.0, W - 4.0, 14.0]
        assert torch.equal(got["segments"], target["segments"])
        return
    pytest.fail("no draw flipped")


def test_missing_png_folder_is_one_line(panoptic_set):
    with pytest.raises(DataError, match="PNG folder .*nowhere does not exist"):
        open_dataset(spec(panoptic_set) + f":{panoptic_set}/nowhere", "val", image_size=64, seed=0, strict=False, train=False)


def test_unknown_category_is_one_line(panoptic_set):
    path = panoptic_set / "annotations" / "panoptic.json"
    data = json.loads(path.read_text())
    data["annotations"][1]["segments_info"][2]["category_id"] = 6
    path.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"image 1 has segments of category 6, which is not in 'categories'"):
        open_dataset(spec(panoptic_set), "val", image_size=64, seed=0, strict=False, train=False)


def test_png_ids_and_segments_info_must_agree(panoptic_set):
    path = panoptic_set / "annotations" / "panoptic.json"
    data = json.loads(path.read_text())
    data["annotations"][2]["segments_info"].pop()  # the square is in the PNG, not in the list
    data["annotations"][1]["segments_info"].append({"id": 99, "category_id": 1, "iscrowd": 0})  # listed, no pixels
    path.write_text(json.dumps(data))
    dataset = open_dataset(spec(panoptic_set), "val", image_size=64, seed=0, strict=False, train=False)
    dataset[0]
    with pytest.raises(AnnotationError, match=r"002.png: ids \[13\] are not in its segments_info"):
        dataset[2]
    with pytest.raises(AnnotationError, match=r"001.png: segments_info ids \[99\] are not in it"):
        dataset[1]


def test_missing_images_and_pngs_are_skipped_and_counted(panoptic_set):
    (panoptic_set / "annotations" / "panoptic" / "001.png").unlink()
    (panoptic_set / "images" / "002.png").unlink()
    dataset = open_dataset(spec(panoptic_set), "val", image_size=64, seed=0, strict=False, train=False)
    assert len(dataset) == 1 and dataset.report.skipped == {"missing_image": 2}
    with pytest.raises(AnnotationError, match="2 missing_image"):
        open_dataset(spec(panoptic_set), "val", image_size=64, seed=0, strict=True, train=False)
