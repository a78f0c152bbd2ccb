rule drr:
    input:
        ct="results/volumes/{case}/ct.nii.gz",
        labels="results/volumes/{case}/labels.nii.gz",
        metal="results/metal/{case}.nii.gz",
        code=code_of("drr"),
    output:
        # every view of a case in one job: each job pays the torch import (about 2.5 s of a
        # 3 s job on the default cohort), so one job per view spent most of its time importing
        nii=expand("results/drr/{{case}}/{view}.nii.gz", view=list(VIEWS)),
        label=expand("results/drr/{{case}}/{view}_label.nii.gz", view=list(VIEWS)),
        png=report(
            expand("results/drr/{{case}}/{view}.png", view=list(VIEWS)),
            caption="captions/drr.rst",
            category="3. DRR",
            subcategory="{case}",
        ),
    log:
        "results/logs/drr/{case}.log",
    benchmark:
        "results/benchmarks/drr/{case}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        gpu=gpus_for(config["drr"].get("device", "auto")),
        mem_mb=mem_mb(NIFTI_MEM_PER_MB),
        runtime=runtime(0.05 * len(VIEWS)),
    params:
        views=list(VIEWS.values()),
        energy_kev=config["drr"].get("energy_kev", 70),
        min_path_mm=config["drr"].get("min_path_mm", 2.0),
        device=config["drr"].get("device", "auto"),
    script:
        "../scripts/drr.py"


rule drr_stack:
    input:
        labels=lambda wildcards: drr_item(wildcards.case)["drr_labels"],
        code=code_of("drr_stack"),
    output:
        "results/drr/{case}/labels_stack.nii.gz",
    log:
        "results/logs/drr_stack/{case}.log",
    benchmark:
        "results/benchmarks/drr_stack/{case}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(10.0),
        runtime=runtime(),
    script:
        "../scripts/drr_stack.py"
