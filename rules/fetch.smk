rule fetch:
    input:
        fetch_inputs,
        code=code_of("fetch"),
    output:
        raw=directory("results/raw/{case}"),
        manifest="results/raw/{case}.manifest.json",
    log:
        "results/logs/fetch/{case}.log",
    benchmark:
        "results/benchmarks/fetch/{case}.tsv"
    conda:
        "../envs/io.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2.0),
        runtime=runtime(0.02),
    params:
        case=lambda wildcards: case_row(wildcards.case),
        phantom=lambda wildcards: phantom_params(wildcards.case),
    script:
        "../scripts/fetch.py"
