"""Centroid files: each format built by hand from its documented layout, read into world LPS.

Positions are checked against SimpleITK's own index -> world mapping on images whose direction
is not the identity (RAS storage, an axis-permuted sagittal storage, an oblique one).
"""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk

from ctseg.core.errors import InputError
from ctseg.formats.centroid_io import (
    centroids_json_text,
    read_centroids,
    write_centroid_outputs,
)
from ctseg.formats.markups import markups_document

SIZE = (20, 16, 12)
SPACING = (0.8, 1.1, 2.0)
#: continuous (i, j, k) indices of three known points, labels L1, L2, L3
POINTS = {20: (3.0, 4.5, 2.0), 21: (10.2, 7.0, 6.0), 22: (15.0, 12.0, 10.5)}


def make_image(direction) -> sitk.Image:
    img = sitk.Image(SIZE, sitk.sitkInt16)
    img.SetSpacing(SPACING)
    img.SetOrigin((10.0, -40.0, 200.0))
    img.SetDirection(tuple(np.asarray(direction, float).ravel()))
    return img


RAS = np.diag([-1.0, -1.0, 1.0])  # axes point to R, A, S
SAG = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])  # axes point to I, L, P
a = 0.2
OBLIQUE = np.array([[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]])


def world(img, idx):
    return np.array(img.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in idx)))


def check(rows, img, points=POINTS, tol=1e-6):
    assert [r["label"] for r in rows] == sorted(points)
    for r in rows:
        assert np.allclose(r["world"], world(img, points[r["label"]]), atol=tol), r
        assert r["name"] == {20: "L1", 21: "L2", 22: "L3", 26: "sacrum"}[r["label"]]
        assert [r["x"], r["y"], r["z"]] == r["world"]


# --- hand-computed PIR voxel coordinates (nibabel reorientation: flip i -> n - 1 - i)
def pir_ras(i, j, k):  # R, A, S storage: P = flipped A, I = flipped S, R = R
    return (SIZE[1] - 1 - j, SIZE[2] - 1 - k, i), (SPACING[1], SPACING[2], SPACING[0])


def pir_sag(i, j, k):  # I, L, P storage: P = k, I = i, R = flipped L
    return (k, i, SIZE[1] - 1 - j), (SPACING[2], SPACING[0], SPACING[1])


@pytest.mark.parametrize("direction,pir", [(RAS, pir_ras), (SAG, pir_sag)], ids=["ras", "sag"])
def test_verse_subject_based_voxel_coordinates(tmp_path, direction, pir):
    img = make_image(direction)
    entries = [{"direction": ["P", "I", "R"]}]
    for label, idx in POINTS.items():
        (x, y, z), _ = pir(*idx)
        entries.append({"label": label, "X": x, "Y": y, "Z": z})
    entries.append({"label": 23, "X": float("nan"), "Y": float("nan"), "Z": float("nan")})
    path = tmp_path / "sub-verse004_seg-subreg_ctd.json"
    path.write_text(json.dumps(entries).replace("NaN", "NaN"))
    check(read_centroids(path, img), img)


@pytest.mark.parametrize("direction,pir", [(RAS, pir_ras), (SAG, pir_sag)], ids=["ras", "sag"])
def test_verse_miccai2020_iso_millimetres(tmp_path, direction, pir):
    img = make_image(direction)
    entries = []
    for label, idx in POINTS.items():
        vox, sp = pir(*idx)
        x, y, z = np.multiply(vox, sp)
        entries.append({"label": label, "X": x, "Y": y, "Z": z})
    path = tmp_path / "GL017_CT_ax_iso-ctd.json"
    path.write_text(json.dumps(entries))
    check(read_centroids(path, img), img)


@pytest.mark.parametrize("direction", [RAS, SAG, OBLIQUE], ids=["ras", "sag", "oblique"])
def test_biomedia_lml_millimetres_along_index_axes(tmp_path, direction):
    img = make_image(direction)
    lines = ["# 0"]
    ids = {20: ("200", "L1_center"), 21: ("210", "L2_center"), 22: ("220", "L3_center")}
    for label, idx in POINTS.items():
        mm = np.multiply(idx, SPACING)
        lines.append("\t".join([*ids[label], *(f"{v:.4f}" for v in mm)]))
    lines.append("270\tS2_center\t1.0\t1.0\t1.0")  # no VerSe id: skipped
    path = tmp_path / "4778644.lml"
    path.write_text("\n".join(lines) + "\n")
    check(read_centroids(path, img), img, tol=1e-4)


def test_lml_under_another_name_is_recognised_by_content(tmp_path):
    img = make_image(RAS)
    path = tmp_path / "centroids.json"  # as the case folder stores whatever it was given
    path.write_text("# 0\n200\tL1_center\t2.4\t4.95\t4.0\n")
    (row,) = read_centroids(path, img)
    assert row["label"] == 20 and np.allclose(row["world"], world(img, (3.0, 4.5, 2.0)))
    path.write_text("not json and not lml\n")
    with pytest.raises(InputError, match="not valid JSON"):
        read_centroids(path, img)


def test_lml_s1_is_the_sacrum_and_ids_stand_in_for_unknown_names(tmp_path):
    img = make_image(OBLIQUE)
    path = tmp_path / "a.lml"
    path.write_text("260\tS1_center\t1.6\t2.2\t4.0\n200\tfirst\t2.4\t4.95\t4.0\n")
    rows = read_centroids(path, img)
    assert [r["label"] for r in rows] == [20, 26]
    assert np.allclose(rows[1]["world"], world(img, (2.0, 2.0, 2.0)))


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_slicer_markups_lps_and_ras(tmp_path, system):
    img = make_image(OBLIQUE)
    points = []
    for label, idx in POINTS.items():
        x, y, z = world(img, idx)
        pos = [x, y, z] if system == "LPS" else [-x, -y, z]
        points.append({"label": {20: "L1", 21: "vertebrae_L2", 22: "L3"}[label], "position": pos})
    points.append({"label": "L4", "position": [0, 0, 0], "positionStatus": "undefined"})
    doc = {"@schema": "x", "markups": [{"type": "Fiducial", "coordinateSystem": system,
                                        "controlPoints": points}]}  # fmt: skip
    path = tmp_path / "c.mrk.json"
    path.write_text(json.dumps(doc))
    check(read_centroids(path, img), img, tol=1e-9)


def test_ours_reads_as_written(tmp_path):
    img = make_image(SAG)
    rows = [{"label": k, "world": world(img, v).tolist()} for k, v in POINTS.items()]
    (tmp_path / "centroids.json").write_text(centroids_json_text(rows))
    check(read_centroids(tmp_path / "centroids.json", img), img, tol=1e-4)


@pytest.mark.parametrize("direction", [RAS, SAG], ids=["ras", "sag"])
def test_verse_writer_agrees_with_nibabel_reorientation(tmp_path, direction):
    """Reference: nibabel reorients the label NIfTI to PIR; its centre of mass is VerSe's X, Y, Z."""
    import nibabel as nib
    from nibabel import orientations as nio
    from scipy import ndimage

    from ctseg.evaluation.centroids import centroids_from_labels
    from ctseg.formats.verse_json import verse_entries

    arr = np.zeros(SIZE[::-1], np.uint8)
    arr[2:5, 3:9, 1:6] = 20
    arr[7:11, 10:14, 12:19] = 22
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(make_image(direction))
    sitk.WriteImage(img, str(tmp_path / "m.nii.gz"))
    n = nib.load(str(tmp_path / "m.nii.gz"))
    trans = nio.ornt_transform(nio.io_orientation(n.affine), nio.axcodes2ornt(("P", "I", "R")))
    pir = nio.apply_orientation(np.asanyarray(n.dataobj), trans)
    ours = verse_entries(centroids_from_labels(img), img, decimals=6)
    assert ours[0] == {"direction": ["P", "I", "R"]}
    for e in ours[1:]:
        ref = ndimage.center_of_mass(pir == e["label"])
        assert np.allclose([e["X"], e["Y"], e["Z"]], ref, atol=1e-4), (e, ref)


@pytest.mark.parametrize("direction", [RAS, SAG, OBLIQUE], ids=["ras", "sag", "oblique"])
def test_written_forms_read_back_to_the_same_points(tmp_path, direction):
    img = make_image(direction)
    rows = [{"label": k, "world": world(img, v).tolist()} for k, v in POINTS.items()]
    paths = write_centroid_outputs(rows, img, tmp_path)
    assert {p.name for p in paths.values()} == {
        "centroids.json",
        "centroids_ctd.json",
        "centroids.mrk.json",
    }
    for p in paths.values():
        check(read_centroids(p, img), img, tol=0.02)
    verse = json.loads(paths["verse"].read_text())
    assert verse[0] == {"direction": ["P", "I", "R"]}
    if direction is RAS:
        (x, y, z), _ = pir_ras(*POINTS[21])
        assert verse[2] == {"label": 21, "X": x, "Y": y, "Z": z}


#: The parts of Slicer's markups-schema-v1.0.3 that a reader relies on.
MARKUPS_SCHEMA = {
    "type": "object",
    "required": ["@schema", "markups"],
    "properties": {
        "@schema": {"type": "string", "pattern": "markups-schema-v1\\.0\\.3\\.json"},
        "markups": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {"enum": ["Fiducial", "Line", "Angle", "Curve", "ClosedCurve", "Plane", "ROI"]},
                    "coordinateSystem": {"enum": ["LPS", "RAS"]},
                    "coordinateUnits": {"enum": ["mm", "um"]},
                    "locked": {"type": "boolean"},
                    "labelFormat": {"type": "string"},
                    "controlPoints": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "label": {"type": "string"},
                                "description": {"type": "string"},
                                "position": {"type": "array", "items": {"type": "number"},
                                             "minItems": 3, "maxItems": 3},
                                "orientation": {"type": "array", "items": {"type": "number"},
                                                "minItems": 9, "maxItems": 9},
                                "selected": {"type": "boolean"},
                                "locked": {"type": "boolean"},
                                "visibility": {"type": "boolean"},
                                "positionStatus": {"enum": ["undefined", "preview", "defined"]},
                            },
                        },
                    },
                    "display": {
                        "type": "object",
                        "properties": {
                            "color": {"type": "array", "items": {"type": "number", "minimum": 0,
                                                                 "maximum": 1}},
                            "glyphType": {"enum": ["Sphere3D", "Diamond3D", "Cross2D"]},
                        },
                    },
                },
            },
        },
    },
}  # fmt: skip


def test_markups_document_meets_the_schema_fields():
    img = make_image(OBLIQUE)
    doc = markups_document(
        [{"label": k, "world": world(img, v).tolist()} for k, v in POINTS.items()]
    )
    jsonschema.validate(doc, MARKUPS_SCHEMA)
    m = doc["markups"][0]
    assert m["type"] == "Fiducial" and m["coordinateSystem"] == "LPS"
    assert [p["label"] for p in m["controlPoints"]] == ["L1", "L2", "L3"]
    assert np.allclose(m["controlPoints"][1]["position"], world(img, POINTS[21]), atol=1e-4)


def test_points_outside_the_image_and_bad_labels_name_the_file(tmp_path):
    img = make_image(RAS)
    outside = tmp_path / "far_ctd.json"
    outside.write_text(json.dumps([{"direction": ["P", "I", "R"]},
                                   {"label": 20, "X": 5, "Y": 40.0, "Z": 3}]))  # fmt: skip
    with pytest.raises(InputError, match="outside the image") as err:
        read_centroids(outside, img, case="c1")
    assert "far_ctd.json" in str(err.value) and "c1" in str(err.value) and "L1" in str(err.value)

    unknown = tmp_path / "u.json"
    unknown.write_text(json.dumps([{"label": 99, "x": 0, "y": 0, "z": 0}]))
    with pytest.raises(InputError, match="not a VerSe vertebra id"):
        read_centroids(unknown, img)

    twice = tmp_path / "t.lml"
    twice.write_text("200\tL1_center\t1\t1\t1\n200\tL1_center\t2\t2\t2\n")
    with pytest.raises(InputError, match="twice"):
        read_centroids(twice, img)

    no_header = tmp_path / "sub_ctd.json"
    no_header.write_text(
        json.dumps([{"direction": ["P", "X", "R"]}, {"label": 20, "X": 1, "Y": 1, "Z": 1}])
    )
    with pytest.raises(InputError, match="axis codes"):
        read_centroids(no_header, img)

    bad = tmp_path / "m.mrk.json"
    bad.write_text(
        json.dumps(
            {
                "markups": [
                    {
                        "type": "Fiducial",
                        "controlPoints": [{"label": "liver", "position": [0, 0, 0]}],
                    }
                ]
            }
        )
    )
    with pytest.raises(InputError, match="names no vertebra"):
        read_centroids(bad, img)

    junk = tmp_path / "j.json"
    junk.write_text("{}")
    with pytest.raises(InputError, match="unknown centroid format"):
        read_centroids(junk, img)
