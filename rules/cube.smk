rule cube:
    input:
        cube_inputs,
        code=code_of("cube"),
    output:
        "results/cubes/{cube}.h5",
    log:
        "results/logs/cube/{cube}.log",
    benchmark:
        "results/benchmarks/cube/{cube}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cases=cube_items,
        recipe=lambda wildcards: CUBES[wildcards.cube],
        seed=config["seed"],
    script:
        "../scripts/cube.py"


rule check_cube:
    input:
        h5="results/cubes/{cube}.h5",
        code=code_of("check_cube"),
    output:
        png=report(
            "results/cubes/{cube}_qc.png",
            caption="captions/cube_qc.rst",
            category="4. Augmentation cubes",
        ),
        tsv="results/cubes/{cube}_labels.tsv",
    log:
        "results/logs/check_cube/{cube}.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=DEFAULT_RES["mem_mb"],
        runtime=DEFAULT_RES["runtime"],
    script:
        "../scripts/check_cube.py"
