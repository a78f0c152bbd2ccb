"""SNOMED CT codes of the vertebrae, for DICOM-SEG segment properties and Slicer's terminology.

DICOM-SEG requires each segment's property category and type as coded concepts (CID 7150 /
CID 7151); 3D Slicer reads the same pair from a ``.seg.nrrd`` segment's ``TerminologyEntry``
tag. The codes are written out here (checked against pydicom's concept dictionary in the
tests) so that writing a ``.seg.nrrd`` does not need pydicom. L6 and T13 have no SNOMED
concept of their own and are coded as "Vertebra".
"""

from __future__ import annotations

SCT = "SCT"

#: Property category of every segment: "Anatomical structure".
CATEGORY: tuple[str, str] = ("91723000", "Anatomical Structure")

#: The generic concept used for levels without their own code.
VERTEBRA: tuple[str, str] = ("51282000", "Vertebra")

#: VerSe id -> (SNOMED CT code value, code meaning).
VERTEBRA_CODES: dict[int, tuple[str, str]] = {
    1: ("14806007", "C1 vertebra"),
    2: ("39976000", "C2 vertebra"),
    3: ("113205007", "C3 vertebra"),
    4: ("5329002", "C4 vertebra"),
    5: ("36978003", "C5 vertebra"),
    6: ("36054005", "C6 vertebra"),
    7: ("87391001", "C7 vertebra"),
    8: ("64864005", "T1 vertebra"),
    9: ("53733008", "T2 vertebra"),
    10: ("1626008", "T3 vertebra"),
    11: ("73071006", "T4 vertebra"),
    12: ("56401006", "T5 vertebra"),
    13: ("45296009", "T6 vertebra"),
    14: ("62487009", "T7 vertebra"),
    15: ("11068009", "T8 vertebra"),
    16: ("82687006", "T9 vertebra"),
    17: ("7610001", "T10 vertebra"),
    18: ("12989004", "T11 vertebra"),
    19: ("23215003", "T12 vertebra"),
    20: ("66794005", "L1 vertebra"),
    21: ("14293000", "L2 vertebra"),
    22: ("36470004", "L3 vertebra"),
    23: ("11994002", "L4 vertebra"),
    24: ("49668003", "L5 vertebra"),
    25: VERTEBRA,  # L6
    26: ("54735007", "Sacrum"),
    28: VERTEBRA,  # T13
}


def type_code(label: int) -> tuple[str, str]:
    """(code value, meaning) of a VerSe id's segmented property type."""
    return VERTEBRA_CODES.get(int(label), VERTEBRA)


def slicer_terminology_entry(label: int) -> str:
    """Slicer's ``TerminologyEntry`` tag value for a vertebra segment.

    Layout (Slicer 5): context~category~type~type modifier~anatomic context~anatomic region~
    region modifier, each coded item as ``scheme^value^meaning`` (empty as ``^^``).
    """
    value, meaning = type_code(label)
    cat_value, cat_meaning = CATEGORY
    return "~".join(
        [
            "Segmentation category and type - 3D Slicer General Anatomy list",
            f"{SCT}^{cat_value}^{cat_meaning}",
            f"{SCT}^{value}^{meaning}",
            "^^",
            "Anatomic codes - DICOM master list",
            "^^",
            "^^",
        ]
    )
