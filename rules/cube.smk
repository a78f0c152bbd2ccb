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
        mem_mb=mem_mb(NIFTI_MEM_PER_MB, base=4000),
        runtime=runtime(0.05, base=60),
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
    benchmark:
        "results/benchmarks/check_cube/{cube}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2.0),
        runtime=runtime(),
    script:
        "../scripts/check_cube.py"
