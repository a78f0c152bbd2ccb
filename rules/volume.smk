rule to_volume:
    input:
        raw="results/raw/{case}",
        manifest="results/raw/{case}.manifest.json",
        code=code_of("to_volume"),
    output:
        ct="results/volumes/{case}/ct.nii.gz",
        labels="results/volumes/{case}/labels.nii.gz",
        centroids="results/volumes/{case}/centroids.json",
    log:
        "results/logs/to_volume/{case}.log",
    benchmark:
        "results/benchmarks/to_volume/{case}.tsv"
    conda:
        "../envs/io.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(VOLUME_MEM_PER_MB),
        runtime=runtime(0.02),
    params:
        label_map=lambda wildcards: label_map_for(wildcards.case),
        ingest=config.get("ingest", {}),
    script:
        "../scripts/to_volume.py"


rule dicom_summary:
    input:
        raw="results/raw/{case}",
        manifest="results/raw/{case}.manifest.json",
        code=code_of("dicom_summary"),
    output:
        "results/stats/{case}.json",
    log:
        "results/logs/dicom_summary/{case}.log",
    benchmark:
        "results/benchmarks/dicom_summary/{case}.tsv"
    conda:
        "../envs/io.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(STATS_MEM_PER_MB),
        runtime=runtime(0.02),
    params:
        ingest=config.get("ingest", {}),
    script:
        "../scripts/dicom_summary.py"


rule summary_table:
    input:
        stats=expand("results/stats/{case}.json", case=CASE_IDS),
        code=code_of("summary_table"),
    output:
        report(
            "results/stats/summary.tsv",
            caption="captions/stats.rst",
            category="1. DICOM summary",
        ),
    log:
        "results/logs/summary_table.log",
    benchmark:
        "results/benchmarks/summary_table.tsv"
    conda:
        "../envs/io.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(),
        runtime=runtime(),
    script:
        "../scripts/summary_table.py"
