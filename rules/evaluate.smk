rule evaluate:
    input:
        eval_inputs,
        code=code_of("evaluate"),
    output:
        metrics=report(
            "results/eval/{experiment}/metrics.tsv",
            caption="captions/metrics.rst",
            category="6. Evaluation",
            subcategory="{experiment}",
        ),
        centroids=report(
            "results/eval/{experiment}/centroids.tsv",
            caption="captions/centroids.rst",
            category="6. Evaluation",
            subcategory="{experiment}",
        ),
        summary=report(
            "results/eval/{experiment}/summary.tsv",
            caption="captions/eval_summary.rst",
            category="6. Evaluation",
            subcategory="{experiment}",
        ),
    log:
        "results/logs/evaluate/{experiment}.log",
    benchmark:
        "results/benchmarks/evaluate/{experiment}.tsv"
    conda:
        "../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(NIFTI_MEM_PER_MB),
        runtime=runtime(0.05),
    params:
        pairs=eval_pairs,
        task=lambda wildcards: EXPERIMENTS[wildcards.experiment]["task"],
    script:
        "../scripts/evaluate.py"


rule dice_plot:
    input:
        metrics="results/eval/{experiment}/metrics.tsv",
        code=code_of("dice_plot"),
    output:
        report(
            "results/report/{experiment}/dice_box.png",
            caption="captions/dice_box.rst",
            category="6. Evaluation",
            subcategory="{experiment}",
        ),
    log:
        "results/logs/dice_plot/{experiment}.log",
    benchmark:
        "results/benchmarks/dice_plot/{experiment}.tsv"
    conda:
        "../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(),
        runtime=runtime(),
    script:
        "../scripts/dice_plot.py"


rule centroid_plot:
    input:
        centroids="results/eval/{experiment}/centroids.tsv",
        code=code_of("centroid_plot"),
    output:
        report(
            "results/report/{experiment}/centroid_errors.png",
            caption="captions/centroid_errors.rst",
            category="6. Evaluation",
            subcategory="{experiment}",
        ),
    log:
        "results/logs/centroid_plot/{experiment}.log",
    benchmark:
        "results/benchmarks/centroid_plot/{experiment}.tsv"
    conda:
        "../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(),
        runtime=runtime(),
    script:
        "../scripts/centroid_plot.py"


rule overlay_plot:
    input:
        unpack(overlay_inputs),
        code=code_of("overlay_plot"),
    output:
        report(
            "results/report/{experiment}/overlay.png",
            caption="captions/overlay.rst",
            category="6. Evaluation",
            subcategory="{experiment}",
        ),
    log:
        "results/logs/overlay_plot/{experiment}.log",
    benchmark:
        "results/benchmarks/overlay_plot/{experiment}.tsv"
    conda:
        "../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(NIFTI_MEM_PER_MB),
        runtime=runtime(),
    script:
        "../scripts/overlay_plot.py"


rule report_tables:
    input:
        report_inputs,
        stats="results/stats/summary.tsv",
        metal="results/metal/summary.tsv",
        code=code_of("report_tables"),
    output:
        report(
            "results/report/summary.md",
            caption="captions/summary.rst",
            category="0. Summary",
        ),
    log:
        "results/logs/report_tables.log",
    benchmark:
        "results/benchmarks/report_tables.tsv"
    conda:
        "../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(),
        runtime=runtime(),
    params:
        experiments=report_experiments(),
        excluded=EXCLUDED,
        families={c: ROWS[c]["family"] for c in cases_in("test")},
    script:
        "../scripts/report_tables.py"
