rule dataset:
    input:
        train_inputs,
        code=code_of("dataset"),
    output:
        "results/datasets/{experiment}.tsv",
    log:
        "results/logs/dataset/{experiment}.log",
    benchmark:
        "results/benchmarks/dataset/{experiment}.tsv"
    priority: train_priority
    conda:
        "../envs/io.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(),
        runtime=runtime(),
    params:
        train_data=train_data,
        val_data=val_data,
    script:
        "../scripts/dataset.py"


rule train:
    input:
        dataset="results/datasets/{experiment}.tsv",
        stages=localiser_stage_files,
        code=code_of("train"),
    output:
        model="results/models/{experiment}/model.pt",
        history="results/models/{experiment}/history.tsv",
        loss=report(
            "results/models/{experiment}/loss.png",
            caption="captions/loss.rst",
            category="5. Training",
            subcategory="{experiment}",
        ),
    log:
        "results/logs/train/{experiment}.log",
    benchmark:
        "results/benchmarks/train/{experiment}.tsv"
    priority: train_priority
    conda:
        "../envs/torch.yaml"
    threads: TRAIN_RES.get("threads", 2)
    resources:
        gpu=experiment_gpus(TRAIN_RES.get("gpu", 0)),
        mem_mb=lambda wildcards, attempt: TRAIN_RES.get("mem_mb", 8000) * attempt,
        runtime=lambda wildcards, attempt: TRAIN_RES.get("runtime", 120) * attempt,
    params:
        experiment=lambda wildcards: experiment_cfg(wildcards.experiment),
        train_data=train_data,
        val_data=val_data,
        out_dir="results/models/{experiment}",
        seed=config["seed"],
        device=lambda wildcards: EXPERIMENTS[wildcards.experiment].get("device", "auto"),
    script:
        "../scripts/train.py"


use rule train as train_stage with:
    input:
        dataset="results/datasets/{experiment}.tsv",
        code=code_of("train"),
    output:
        "results/models/{experiment}/stages/{stage}.json",
    log:
        "results/logs/train/{experiment}.{stage}.log",
    benchmark:
        "results/benchmarks/train/{experiment}.{stage}.tsv"
    wildcard_constraints:
        stage=r"first_stage_\d+|refiner|regions",
    priority: 1


rule predict:
    input:
        predict_inputs,
        unpack(identify_input),
        model=model_input,
        code=code_of("predict"),
    output:
        "results/predictions/{experiment}/{case}.nii.gz",
    log:
        "results/logs/predict/{experiment}/{case}.log",
    benchmark:
        "results/benchmarks/predict/{experiment}/{case}.tsv"
    wildcard_constraints:
        experiment=_alternation(VOXEL_EXPERIMENTS),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        gpu=experiment_gpus(),
        mem_mb=mem_mb(NIFTI_MEM_PER_MB, base=4000),
        runtime=runtime(0.05),
    params:
        inputs=predict_data,
        device=lambda wildcards: EXPERIMENTS[wildcards.experiment].get("device", "auto"),
    script:
        "../scripts/predict.py"


rule case_outputs:
    input:
        unpack(outputs_inputs),
        unpack(localiser_input),
        code=code_of("case_outputs"),
    output:
        qc="results/outputs/{experiment}/{case}/qc.json",
    log:
        "results/logs/case_outputs/{experiment}/{case}.log",
    benchmark:
        "results/benchmarks/case_outputs/{experiment}/{case}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(NIFTI_MEM_PER_MB),
        runtime=runtime(0.05),
    params:
        out_dir="results/outputs/{experiment}/{case}",
        dicom=outputs_dicom,
        trained_ids=lambda wildcards: EXPERIMENTS[wildcards.experiment].get("labels"),
    script:
        "../scripts/case_outputs.py"


rule predict_centroids:
    input:
        ct="results/volumes/{case}/ct.nii.gz",
        model=model_input,
        code=code_of("predict_centroids"),
    output:
        "results/predictions/{experiment}/{case}.centroids.json",
    log:
        "results/logs/predict_centroids/{experiment}/{case}.log",
    benchmark:
        "results/benchmarks/predict_centroids/{experiment}/{case}.tsv"
    wildcard_constraints:
        experiment=_alternation(CENTROID_EXPERIMENTS),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        gpu=experiment_gpus(),
        mem_mb=mem_mb(NIFTI_MEM_PER_MB, base=4000),
        runtime=runtime(0.05),
    params:
        device=lambda wildcards: EXPERIMENTS[wildcards.experiment].get("device", "auto"),
    script:
        "../scripts/predict_centroids.py"
