import json

import pytest

from labelkit.coco import CocoFormatError, load_coco, read_json, validate_coco
from labelkit.jsonfile import read_jsonl_objects


def coco(**overrides):
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 8}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4], "iscrowd": 0}],
        "categories": [{"id": 3, "name": "cat"}],
    }
    data.update(overrides)
    return data


def error_of(data) -> str:
    with pytest.raises(CocoFormatError) as info:
        validate_coco(data, "x.json")
    return str(info.value)


def test_valid_file_passes():
    validate_coco(coco(), "x.json")


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_key(key):
    data = coco()
    del data[key]
    assert f"missing top-level key '{key}'" in error_of(data)


def test_message_names_file_record_and_field():
    message = error_of(coco(annotations=[{"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 1, -4, 4]}]))
    assert "x.json" in message and "annotations[0] (id 7)" in message and "field 'bbox'" in message


@pytest.mark.parametrize(
    "bbox, words",
    [
        ([1, 2, 3], "list of 4 numbers"),
        ([1, 2, float("nan"), 3], "finite"),
        ([1, 2, 3, -1], "must not be negative"),
        ("1,2,3,4", "list of 4 numbers"),
    ],
)
def test_bad_boxes(bbox, words):
    assert words in error_of(coco(annotations=[{"id": 7, "image_id": 1, "category_id": 3, "bbox": bbox}]))


def test_wrong_types():
    message = error_of(coco(images=[{"id": "1", "file_name": "a.jpg", "width": 10.5, "height": 8}]))
    assert "images[0] (id '1'): field 'id'" in message and "field 'width'" in message


def test_unknown_category_and_image():
    message = error_of(coco(annotations=[{"id": 7, "image_id": 2, "category_id": 4, "bbox": [1, 1, 2, 2]}]))
    assert "field 'image_id': unknown image id 2" in message
    assert "field 'category_id': unknown category id 4" in message


def test_duplicate_ids():
    ann = {"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2]}
    message = error_of(coco(annotations=[ann, dict(ann)]))
    assert "annotations[1] (id 7): field 'id': duplicate id 7 (first at annotations[0])" in message


def test_read_json_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(CocoFormatError, match="bad.json: invalid JSON at line 1"):
        read_json(bad)
    bad.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(CocoFormatError, match="not UTF-8"):
        read_json(bad)
    with pytest.raises(CocoFormatError, match="file not found"):
        read_json(tmp_path / "absent.json")


def test_missing_image_file_and_escaping_path(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco()))
    with pytest.raises(CocoFormatError, match=r"images\[0\] \(id 1\): field 'file_name': .*a.jpg not found"):
        load_coco(path)
    (tmp_path / "a.jpg").write_bytes(b"")
    assert load_coco(path).images_by_id[1]["file_name"] == "a.jpg"
    data = coco(images=[{"id": 1, "file_name": "../../etc/passwd", "width": 10, "height": 8}])
    path.write_text(json.dumps(data))
    with pytest.raises(CocoFormatError, match="outside the image directory"):
        load_coco(path)


def test_byte_order_mark_empty_file_and_top_level_list(tmp_path):
    path = tmp_path / "ann.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(coco()).encode())  # as Windows tools save UTF-8
    assert load_coco(path, check_image_files=False).annotations[0]["id"] == 7
    for empty in (b"", b"\xef\xbb\xbf", b" \n"):
        path.write_bytes(empty)
        with pytest.raises(CocoFormatError, match="ann.json: file is empty; it must hold a JSON object with 'images'"):
            read_json(path)
    path.write_text(json.dumps(coco()["annotations"]))
    with pytest.raises(CocoFormatError, match="top level is a JSON list; it must be an object with 'images', 'annot"):
        read_json(path)


def test_jsonl_reader_byte_order_mark_empty_file_and_lists(tmp_path):
    path = tmp_path / "chunks.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"a": 2}\n')
    assert [r for _, r in read_jsonl_objects(path, ValueError, "'a'")] == [{"a": 1}, {"a": 2}]
    assert [w for w, _ in read_jsonl_objects(path, ValueError, "'a'")] == [f"{path}: line 1", f"{path}: line 3"]
    for empty in (b"", b"\xef\xbb\xbf\n \n"):
        path.write_bytes(empty)
        with pytest.raises(ValueError, match="chunks.jsonl: file is empty; each line must be a JSON object with 'a'"):
            list(read_jsonl_objects(path, ValueError, "'a'"))
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2: is a JSON list; each line must be an object with 'a'"):
        list(read_jsonl_objects(path, ValueError, "'a'"))
    path.write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(ValueError, match="not UTF-8"):
        list(read_jsonl_objects(path, ValueError, "'a'"))
    with pytest.raises(ValueError, match="file not found"):
        list(read_jsonl_objects(tmp_path / "absent.jsonl", ValueError, "'a'"))


def test_masks_are_checked_with_the_file_naming_record_and_field():
    ann = {"id": 0, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4]}
    bad = [
        {**ann, "segmentation": {"size": [8, 10], "counts": [70, 20]}},
        {**ann, "id": 1, "segmentation": [[1.0, 1.0, 1e9, 1.0, 5.0, 5.0]]},
        {**ann, "id": 2, "segmentation": {"size": [10, 8], "counts": [80]}},
    ]
    message = error_of(coco(annotations=bad))
    assert "x.json" in message
    assert "annotations[0] (id 0): field 'segmentation.counts': runs cover 90 pixels, but a 8x10 mask has 80" in message
    assert "annotations[1] (id 1): field 'segmentation[0]': point 1 (1000000000.0, 1.0) is not within" in message
    assert (
        "annotations[2] (id 2): field 'segmentation.size': [10, 8] is not the image's [height, width] [8, 10]"
        in message
    )
    box_only = [{**ann, "segmentation": []}, {**ann, "id": 1, "segmentation": [[1.0, 1.0, 2.0, 2.0]]}]
    validate_coco(coco(annotations=box_only), "x.json")  # no mask, or a degenerate one: left out when scoring
