rule metal:
    input:
        ct="results/volumes/{case}/ct.nii.gz",
        code=code_of("metal"),
    output:
        mask="results/metal/{case}.nii.gz",
        json="results/metal/{case}.json",
        qc=report(
            "results/metal/{case}_qc.png",
            caption="captions/metal_qc.rst",
            category="2. Metal",
            subcategory="{case}",
        ),
    log:
        "results/logs/metal/{case}.log",
    benchmark:
        "results/benchmarks/metal/{case}.tsv"
    conda:
        "../envs/io.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(NIFTI_MEM_PER_MB),
        runtime=runtime(0.05),
    params:
        threshold_hu=config["metal"]["threshold_hu"],
        min_size=config["metal"]["min_size"],
        dilation_vox=config["metal"]["dilation_vox"],
        slice_pngs=config["metal"]["slice_pngs"],
        slice_png_dir="results/metal/{case}_slices",
    script:
        "../scripts/metal.py"


rule metal_summary:
    input:
        json=expand("results/metal/{case}.json", case=CASE_IDS),
        code=code_of("metal_summary"),
    output:
        report(
            "results/metal/summary.tsv",
            caption="captions/metal_summary.rst",
            category="2. Metal",
        ),
    log:
        "results/logs/metal_summary.log",
    benchmark:
        "results/benchmarks/metal_summary.tsv"
    conda:
        "../envs/io.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(),
        runtime=runtime(),
    script:
        "../scripts/metal_summary.py"
