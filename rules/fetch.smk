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
        mem_mb=DEFAULT_RES["mem_mb"],
        runtime=DEFAULT_RES["runtime"],
    params:
        case=lambda wildcards: case_row(wildcards.case),
        phantom=lambda wildcards: phantom_params(wildcards.case),
    script:
        "../scripts/fetch.py"
