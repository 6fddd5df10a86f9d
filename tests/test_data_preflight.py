"""The pre-flight image check and the loaders reach the same verdict on every kind of bad file (the
shared rules of scob_fast.data.images), the report names them all at once, a split can drop them;
and which images without labels a reader keeps."""
import json
import warnings

import numpy as np
import pytest

from scob_fast.data import build_dataset, build_loader, dali_available, observe_labels
from scob_fast.data.images import DEFAULT_MAX_PIXELS, check_encoded, read_file
from scob_fast.data.preflight import check_images, describe
from scob_fast.data.testing import (damage, make_coco, make_folder, make_list_dataset, make_voc, write_image,
                                    write_png_bomb)

LOADERS = [pytest.param("dali", marks=pytest.mark.skipif(dali_available() is not None, reason="no DALI")), "pil"]
HALF = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

# row -> (how the file is spoilt, the format it is written in first, the verdict's kind)
BAD = {
    1: ("missing", "JPEG", "missing"),
    3: ("empty", "JPEG", "empty"),
    4: ("truncate", "JPEG", "truncated"),
    6: ("corrupt-middle", "JPEG", "corrupt"),      # libjpeg stops, DALI's decoder would go on
    7: ("bad-crc", "PNG", "corrupt"),              # libpng stops, PIL never checks
    9: ("bomb", "JPEG", "too large"),              # 14000 x 14000 = 196 megapixels in the header
    10: ("garbage", "JPEG", "not an image"),       # a text file named .jpg
}
DECODE_ONLY = {12: ("undecodable", "PNG", "corrupt")}  # a valid structure: only a decoder finds out


@pytest.fixture()
def spoilt(tmp_path):
    make_folder(tmp_path, n_train=4, n_test=14)
    ds = build_dataset("folder", tmp_path, "test")
    for row, (how, fmt, _) in {**BAD, **DECODE_ONLY}.items():
        if fmt == "PNG":
            write_image(ds.image_paths[row], seed=row, fmt="PNG")
        damage(ds.image_paths[row], how)
    return ds


def _verdicts_of_check(bad):
    return {b.path: f"{b.kind}: {b.detail}" for b in bad}


def _verdicts_of_loader(ds, kind, **kw):
    loader = build_loader(ds, observe_labels(ds.labels, "full"), batch_size=4, image_size=16, train=True,
                          hard_view=True, drop_last=False, loader=kind, workers=1, max_bad_fraction=1.0,
                          device="cpu" if kind == "dali" else None, **HALF, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        seen = [int(i) for batch in loader for i in batch["index"]]
    return dict(loader.skipped_files), seen


def test_the_check_finds_every_kind_at_once(spoilt):
    bad = check_images(spoilt)
    assert {b.index: b.kind for b in bad} == {row: kind for row, (_, _, kind) in BAD.items()}
    assert [b.index for b in bad] == sorted(BAD), "dataset order"
    assert all(b.path == spoilt.image_paths[b.index] and b.detail for b in bad)
    full = check_images(spoilt, full_decode=True)
    assert {b.index: b.kind for b in full} == {row: kind for row, (_, _, kind) in {**BAD, **DECODE_ONLY}.items()}
    report = describe(full, spoilt)
    lines = report.splitlines()
    assert lines[0] == ("8 of 14 images of folder (test) cannot be used (1 missing, 1 empty, 1 not an image, "
                        "1 truncated, 3 corrupt, 1 too large):")
    assert lines[1:] == [f"  {b.path}: {b.kind} ({b.detail})" for b in full], "one line per file"
    assert "196,000,000 pixels" in report and "CRC" in report and "unknown JPEG marker" in report
    assert describe(full, spoilt, limit=3).splitlines()[-1] == "  ... and 5 more"
    assert describe([], spoilt) == "all of 14 images of folder (test) passed the image check"


@pytest.mark.parametrize("kind", LOADERS)
def test_loaders_reach_the_verdict_of_the_check(spoilt, kind):
    verdicts, seen = _verdicts_of_loader(spoilt, kind)
    assert verdicts == _verdicts_of_check(check_images(spoilt, full_decode=True)), "same files, same words"
    assert sorted(seen) == sorted(set(range(14)) - set(BAD) - set(DECODE_ONLY))


def test_both_loaders_agree_with_the_header_pass_where_it_decides(spoilt):
    # without the decode-only file, the fast pass alone predicts every skip of both loaders
    ds = spoilt.without([spoilt.image_paths[r] for r in DECODE_ONLY])
    header = _verdicts_of_check(check_images(ds))
    for kind in [k for k in ("pil", "dali") if k == "pil" or dali_available() is None]:
        assert _verdicts_of_loader(ds, kind)[0] == header


@pytest.mark.parametrize("kind", LOADERS)
def test_the_pixel_limit_is_configurable(tmp_path, kind):
    make_folder(tmp_path, n_train=4, n_test=5)
    ds = build_dataset("folder", tmp_path, "test")
    sizes = [read_file(p)[0] for p in ds.image_paths]
    assert all(check_encoded(d) is None for d in sizes), "the default limit keeps small images"
    limit = 50 * 50  # make_folder's pictures are 40..89 x 32..79
    bad = check_images(ds, max_pixels=limit)
    assert bad and all(b.kind == "too large" and f"limit of {limit:,}" in b.detail for b in bad)
    verdicts, _ = _verdicts_of_loader(ds, kind, max_pixels=limit)
    assert verdicts == _verdicts_of_check(bad)
    assert DEFAULT_MAX_PIXELS == 89_478_485, "PIL's default Image.MAX_IMAGE_PIXELS"


def test_a_real_bomb_is_refused_from_its_header(tmp_path):
    # (limit + 1) x 1 grey pixels: a valid PNG of about 90 kB that decodes to 89 MB
    path = write_png_bomb(tmp_path / "bomb.png", DEFAULT_MAX_PIXELS + 1, 1)
    data = read_file(str(path))[0]
    assert data.size < 200_000
    problem = check_encoded(data)
    assert problem.kind == "too large" and "89478486 x 1 = 89,478,486 pixels" in problem.detail
    assert check_encoded(data, max_pixels=DEFAULT_MAX_PIXELS + 1) is None, "a valid file under a higher limit"


def test_skip_policy_drops_the_bad_files(spoilt):
    bad = check_images(spoilt, full_decode=True)
    rows = spoilt.rows_without(b.path for b in bad)
    kept = spoilt.without(b.path for b in bad)
    assert rows.tolist() == sorted(set(range(14)) - {b.index for b in bad})
    assert kept.image_paths == [spoilt.image_paths[i] for i in rows]
    np.testing.assert_array_equal(kept.labels, spoilt.labels[rows])
    assert (kept.name, kept.split, kept.class_names) == (spoilt.name, spoilt.split, spoilt.class_names)
    assert check_images(kept, full_decode=True) == []
    for kind in [k for k in ("pil", "dali") if k == "pil" or dali_available() is None]:
        verdicts, seen = _verdicts_of_loader(kept, kind)
        assert verdicts == {} and sorted(seen) == list(range(len(kept)))


# ------------------------------------------------------------------------------ images without labels
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_folder_rows_without_labels_are_dropped(tmp_path, fmt):
    for i in range(6):
        write_image(tmp_path / f"{i}.jpg", seed=i)
    rows = [("0.jpg", ["cat"]), ("1.jpg", []), ("2.jpg", ["dog", "cat"]), ("3.jpg", []), ("4.jpg", ["dog"]),
            ("5.jpg", [])]
    for split in ("train", "test"):
        if fmt == "csv":
            # a row with an empty label field and a row without the field at all
            text = "".join(f"{p},{';'.join(labs)}\n" if labs or p != "5.jpg" else f"{p}\n" for p, labs in rows)
            (tmp_path / f"{split}.csv").write_text(text)
        else:
            (tmp_path / f"{split}.json").write_text(json.dumps([{"path": p, "labels": labs} for p, labs in rows]))
    test = build_dataset("folder", tmp_path, "test")
    assert [p.rsplit("/", 1)[1] for p in test.image_paths] == ["0.jpg", "2.jpg", "4.jpg"]
    np.testing.assert_array_equal(test.labels, [[1, 0], [1, 1], [0, 1]])
    train = build_dataset("folder", tmp_path, "train", val_fraction=0.0)
    assert len(train) == 3 and train.labels.any(axis=1).all(), "every training image has a positive"


def test_which_readers_drop_images_without_labels(tmp_path):
    # COCO and folder/CSV lists give such an image no label at all: dropped (Cole et al.'s COCO code)
    root, expected = make_coco(tmp_path / "coco", unannotated=3)
    test = build_dataset("coco2014", root, "test")
    assert len(test) == len(expected["val"][0]) and test.labels.any(axis=1).all()
    # the benchmarks' formatted lists keep every row: the public protocols index them row by row
    root, expected = make_list_dataset(tmp_path / "nus", "nuswide")
    test = build_dataset("nuswide", root, "test")
    assert len(test) == len(expected["test"][0]) and not test.labels.any(axis=1).all()
    root, expected = make_voc(tmp_path / "voc", "2012")
    train = build_dataset("voc2012", root, "train", val_fraction=0.0)
    assert len(train) == len(expected["train"][0]) and not train.labels.any(axis=1).all(), \
        "an image whose objects are all difficult stays (as all-negative)"
