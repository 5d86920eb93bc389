"""Inputs and vocabularies: folders, COCO files, ontologies, noun-chunk JSONL, and their errors."""

import json

import cv2
import numpy as np
import pytest

from gdino.data import GroundingDinoDataModule
from gdino.errors import GDinoError


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    (root / "b").mkdir(parents=True)
    for name in ["x.jpg", "b/x.JPEG", "b/y.Png"]:
        cv2.imwrite(
            str(root / name),
            np.zeros((96, 120 if "y" in name else 128, 3), np.uint8),
            [cv2.IMWRITE_JPEG_QUALITY, 90] if "J" in name.upper() else [],
        )
    (root / "notes.txt").write_text("not an image")
    return root


def test_folders_are_searched_recursively_with_any_case_extensions(photos):
    data = GroundingDinoDataModule(image_dir=str(photos), class_names=["Person", "car"])
    assert [(it.image_id, it.file_name, it.size) for it in data.items] == [
        (1, "b/x.JPEG", (96, 128)),
        (2, "b/y.Png", (96, 120)),
        (3, "x.jpg", (96, 128)),
    ]
    assert data.vocabulary.prompts == ["person", "car"]
    assert data.vocabulary.categories == [{"id": 1, "name": "Person"}, {"id": 2, "name": "car"}]
    batches = list(data.predict_dataloader())
    assert [[r["item"].index for r in b] for b in batches] == [[0], [1], [2]]


def test_ontology_maps_synonyms_to_one_class(photos, tmp_path):
    ontology = tmp_path / "ontology.yaml"
    ontology.write_text("person: person\nman: person\nwoman: person\nautomobile: car\n")
    vocab = GroundingDinoDataModule(image_dir=str(photos), ontology=str(ontology)).vocabulary
    assert vocab.prompts == ["person", "man", "woman", "automobile"]
    assert vocab.prompt_class == [0, 0, 0, 1] and vocab.class_names == ["person", "car"]


def test_coco_file_keeps_ids_and_matches_class_names_to_categories(photos, tmp_path):
    ann = tmp_path / "a.json"
    ann.write_text(
        json.dumps(
            {
                "images": [{"id": 7, "file_name": "x.jpg", "width": 128, "height": 96}],
                "categories": [{"id": 3, "name": "Car"}, {"id": 9, "name": "person"}],
            }
        )
    )
    data = GroundingDinoDataModule(image_dir=str(photos), ann_path=str(ann), class_names=["car"])
    assert [it.image_id for it in data.items] == [7]
    assert data.vocabulary.category_ids == [3] and len(data.vocabulary.categories) == 2
    assert GroundingDinoDataModule(image_dir=str(photos), ann_path=str(ann)).vocabulary.prompts == [
        "car",
        "person",
    ]
    with pytest.raises(GDinoError, match=r"\['dog'\] are not categories of .*a.json"):
        GroundingDinoDataModule(image_dir=str(photos), ann_path=str(ann), class_names=["dog"])


def test_bad_noun_chunk_lines_name_the_line_and_field(photos, tmp_path):
    chunks = tmp_path / "c.jsonl"
    chunks.write_text('{"file_name": "x.jpg", "noun_chunks": ["a man"]}\n{"file_name": "x.jpg", "noun_chunks": []}\n')
    with pytest.raises(GDinoError, match=r"c.jsonl: line 2: field 'noun_chunks'"):
        GroundingDinoDataModule(image_dir=str(photos), noun_chunk_path=str(chunks))
    chunks.write_text("{oops\n")
    with pytest.raises(GDinoError, match=r"c.jsonl: line 1: invalid JSON"):
        GroundingDinoDataModule(image_dir=str(photos), noun_chunk_path=str(chunks))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_names": ["a"], "ontology": "o.yaml"}, "give one"),
        ({}, "nothing to detect"),
        ({"class_names": ["a"], "batch_size": 0}, "batch_size"),
    ],
)
def test_conflicting_or_missing_options_are_errors(photos, kwargs, message):
    with pytest.raises(GDinoError, match=message):
        GroundingDinoDataModule(image_dir=str(photos), **kwargs)
