"""Standard files a segmented scan is delivered in, and the annotation files real datasets ship.

Writers take a label image on the source grid (VerSe ids) and write what a user's viewer or
toolkit opens: a 3D Slicer ``.seg.nrrd`` (:mod:`.slicer_seg`), a DICOM-SEG referencing the
source series (:mod:`.dicom_seg`), centroids as ours / VerSe JSON / Slicer markups
(:mod:`.centroid_io`, :mod:`.verse_json`, :mod:`.markups`), per-vertebra statistics
(:mod:`.vertebra_stats`) and quality flags (:mod:`.qc`; the QC picture is drawn by
:mod:`ctseg.report.qc_png`). Readers bring centroid annotations (ours, both VerSe forms,
BioMedia ``.lml``, Slicer markups) into world LPS mm (:func:`.centroid_io.read_centroids`).
Geometry helpers shared by all live in :mod:`.grid`.
"""
