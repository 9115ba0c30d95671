//! Broken model folders, exports and run folders.

use super::*;

/// The installed model's folder with `edit` applied to a copy.
fn model_case(name: &'static str, edit: impl Fn(&Path) + 'static, expect: &str) -> Case {
    let mut c = case(name, &[], expect)
        .file("d.csv", TRAIN_CSV)
        .copy(&minilm(), "model")
        .edit(edit);
    c.args = train_on("@/d.csv", &["--model", "@/model"]);
    c
}

#[test]
fn bad_model_folders() {
    let st = |bytes: Vec<u8>| {
        move |d: &Path| std::fs::write(d.join("model/model.safetensors"), &bytes).unwrap()
    };
    let mut huge_header = u64::MAX.to_le_bytes().to_vec();
    huge_header.extend_from_slice(b"{}");
    let mut short = 1000u64.to_le_bytes().to_vec();
    short.extend_from_slice(b"{\"a\":");
    let cases = vec![
        case(
            "model_missing",
            &[
                "train",
                "--task",
                "sentiment",
                "--model",
                "no-such-model",
                "--output-dir",
                "@/out",
            ],
            "model `no-such-model` is neither a folder with config.json nor a model in",
        ),
        model_case(
            "config_not_json",
            |d| std::fs::write(d.join("model/config.json"), "{ nope").unwrap(),
            "model/config.json",
        ),
        model_case(
            "config_other_architecture",
            |d| {
                let p = d.join("model/config.json");
                let t = std::fs::read_to_string(&p)
                    .unwrap()
                    .replace("\"bert\"", "\"t5\"");
                std::fs::write(p, t).unwrap();
            },
            "model_type `t5` is not supported (expected `bert`, `roberta` or `gpt2`)",
        ),
        model_case(
            "config_hidden_size_missing",
            |d| {
                let p = d.join("model/config.json");
                let mut v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                v.as_object_mut().unwrap().remove("hidden_size");
                std::fs::write(p, v.to_string()).unwrap();
            },
            "hidden_size",
        ),
        model_case(
            "weights_missing",
            |d| std::fs::remove_file(d.join("model/model.safetensors")).unwrap(),
            "has neither model.safetensors nor model.safetensors.index.json",
        ),
        model_case("weights_truncated_header", st(short), "model.safetensors"),
        model_case(
            "weights_header_size_absurd",
            st(huge_header),
            "model.safetensors",
        ),
        model_case("weights_empty_file", st(Vec::new()), "model.safetensors"),
        model_case(
            "weights_wrong_dtype",
            st(safetensors(&[(
                "embeddings.word_embeddings.weight",
                "F64",
                vec![2, 2],
                vec![0; 32],
            )])),
            "model.safetensors",
        ),
        model_case(
            "weights_wrong_shape",
            |d| {
                let p = d.join("model/model.safetensors");
                let mut t = read_st(&p);
                let w = t
                    .iter_mut()
                    .find(|w| w.name.ends_with("layer.0.attention.self.query.weight"))
                    .unwrap();
                w.reshape(vec![384, 192]);
                write_st(&p, &t);
            },
            "encoder.layer.0.attention.self.query.weight",
        )
        .also("[384, 192]"),
        model_case(
            "weights_tensor_missing",
            |d| {
                let p = d.join("model/model.safetensors");
                let mut t = read_st(&p);
                t.retain(|w| !w.name.ends_with("layer.3.output.dense.weight"));
                write_st(&p, &t);
            },
            "layer.3.output.dense.weight",
        ),
        model_case(
            "weights_index_names_missing_shard",
            |d| {
                std::fs::remove_file(d.join("model/model.safetensors")).unwrap();
                std::fs::write(d.join("model/model.safetensors.index.json"), "{\"weight_map\":{\"embeddings.word_embeddings.weight\":\"model-00001.safetensors\"}}").unwrap();
            },
            "model-00001.safetensors",
        ),
        model_case(
            "tokenizer_missing",
            |d| std::fs::remove_file(d.join("model/tokenizer.json")).unwrap(),
            "reading @/model/tokenizer.json",
        ),
        model_case(
            "tokenizer_not_json",
            |d| std::fs::write(d.join("model/tokenizer.json"), "{\"model\": 3").unwrap(),
            "tokenizer.json",
        ),
    ];
    run("model", cases);
}

/// An export folder copied from the finished run's `final/`, then edited.
fn export_case(name: &'static str, edit: impl Fn(&Path) + 'static, expect: &str) -> Case {
    case(
        name,
        &["eval", "--model-dir", "@/ex", "--file", "@/d.csv"],
        expect,
    )
    .file("d.csv", TRAIN_CSV)
    .copy(&finished_run().join("final"), "ex")
    .edit(edit)
}

fn edit_adapter(d: &Path, f: impl Fn(&mut Vec<RawTensor>)) {
    let p = d.join("ex/adapter_model.safetensors");
    let mut t = read_st(&p);
    f(&mut t);
    write_st(&p, &t);
}

#[test]
fn bad_exports_and_run_folders() {
    let run_dir = finished_run();
    let cases = vec![
        export_case("adapter_nan_weights", |d| edit_adapter(d, |t| {
            let mut v = t[0].values();
            v[0] = f32::NAN;
            t[0].set_values(&v);
        }), "adapter_model.safetensors").also("the weights are not finite"),
        export_case("adapter_infinite_weights", |d| edit_adapter(d, |t| {
            let mut v = t[1].values();
            v[3] = f32::INFINITY;
            t[1].set_values(&v);
        }), "the weights are not finite"),
        export_case("adapter_lora_b_missing", |d| edit_adapter(d, |t| t.retain(|w| !w.name.contains("layer.2.attention.self.value.lora_B"))), "`encoder.layer.2.attention.self.value.lora_B.weight` is missing"),
        export_case("adapter_head_missing", |d| edit_adapter(d, |t| t.retain(|w| !w.name.contains("classifier"))), "`classifier.weight` is missing"),
        export_case("adapter_wrong_shape", |d| edit_adapter(d, |t| {
            let w = t.iter_mut().find(|w| w.name.contains("lora_A")).unwrap();
            w.reshape(vec![4, 384]);
        }), "has shape [4, 384] but the model needs [8, 384]"),
        export_case("adapter_unknown_tensor", |d| edit_adapter(d, |t| t.push(RawTensor {
            name: "base_model.model.bert.encoder.layer.0.attention.self.key.lora_A.weight".into(),
            dtype: "F32".into(),
            shape: vec![8, 384],
            bytes: f32_bytes(&[0.0; 8 * 384]),
        })), "is not a parameter of this model"),
        export_case("adapter_weights_missing", |d| std::fs::remove_file(d.join("ex/adapter_model.safetensors")).unwrap(), "adapter_model.safetensors is missing"),
        export_case("adapter_weights_garbage", |d| std::fs::write(d.join("ex/adapter_model.safetensors"), b"garbage!").unwrap(), "adapter_model.safetensors"),
        export_case("adapter_config_corrupt", |d| std::fs::write(d.join("ex/adapter_config.json"), "{ broken").unwrap(), "adapter_config.json"),
        export_case("adapter_config_disagrees", |d| {
            let p = d.join("ex/adapter_config.json");
            let t = std::fs::read_to_string(&p).unwrap().replace("\"r\": 8", "\"r\": 16");
            std::fs::write(p, t).unwrap();
        }, "adapter_config.json: describes LoRA (r 16").also("but tunelab_export.json says LoRA (r 8"),
        export_case("adapter_config_missing", |d| std::fs::remove_file(d.join("ex/adapter_config.json")).unwrap(), "adapter_config.json is missing"),
        export_case("adapter_config_peft_type_unknown", |d| {
            let p = d.join("ex/adapter_config.json");
            let t = std::fs::read_to_string(&p).unwrap().replace("\"LORA\"", "\"VERA\"");
            std::fs::write(p, t).unwrap();
        }, "peft_type Some(\"VERA\") is not supported"),
        export_case("manifest_corrupt", |d| std::fs::write(d.join("ex/tunelab_export.json"), "[1, 2").unwrap(), "tunelab_export.json"),
        export_case("manifest_base_model_unknown", |d| {
            let p = d.join("ex/tunelab_export.json");
            let t = std::fs::read_to_string(&p).unwrap().replace("all-MiniLM-L6-v2", "no-such-base");
            std::fs::write(p, t).unwrap();
        }, "finding the base model `no-such-base`"),
        case("eval_folder_missing", &["eval", "--model-dir", "@/nothing", "--file", "@/d.csv"], "reading @/nothing").file("d.csv", TRAIN_CSV),
        case("predict_nothing", &["predict", "--model-dir", "@/ex"], "nothing to predict: give --text or --input").copy(&run_dir.join("final"), "ex"),
        case("predict_input_not_utf8", &["predict", "--model-dir", "@/ex", "--input", "@/in.txt"], "in.txt:2: byte 1 of this line is not UTF-8 text")
            .copy(&run_dir.join("final"), "ex").file("in.txt", b"fine\n\xff\n".to_vec()),
        case("generate_from_a_classifier", &["generate", "--model-dir", "@/ex", "--prompt", "hello"], "generation needs a causal language model; this one was trained for sequence classification")
            .copy(&run_dir.join("final"), "ex"),
        case("generate_from_an_encoder_folder", &["generate", "--model-dir", "@/model", "--prompt", "hello"], "`bert` is an encoder and has no causal-LM head")
            .copy(&minilm(), "model"),
        case("generate_top_p_zero", &["generate", "--model-dir", "@/ex", "--top-p", "0"], "top_p must be in (0, 1], got 0").copy(&run_dir.join("final"), "ex"),
        case("generate_temperature_negative", &["generate", "--model-dir", "@/ex", "--temperature=-1"], "temperature must be a number ≥ 0 (0: greedy), got -1").copy(&run_dir.join("final"), "ex"),
        case("generate_folder_missing", &["generate", "--model-dir", "@/nothing"], "reading @/nothing/config.json"),
        case("causal_lm_on_an_encoder", &["train", "--task", "causal-lm", "--train-file", "@/t.txt", "--model", "@/model", "--output-dir", "@/out"], "causal LM needs a decoder such as GPT-2")
            .copy(&minilm(), "model").file("t.txt", "some plain text to model\n".repeat(20)),
        case("masked_lm_on_a_decoder", &["train", "--task", "masked-lm", "--train-file", "@/t.txt", "--model", &tiny_gpt2().display().to_string(), "--output-dir", "@/out"], "`gpt2` is a decoder and has no masked-LM head: train it with `causal-lm`")
            .file("t.txt", "some plain text to model\n".repeat(20)),
        case("export_into_user_folder", &["export", "--checkpoint", &run_dir.display().to_string(), "--out", "@/mine"], "@/mine is not empty and is not an earlier export of Tunelab (it holds notes.txt); nothing was written")
            .file("mine/notes.txt", "my thesis"),
        case("export_into_cwd", &["export", "--checkpoint", &run_dir.display().to_string(), "--out", "."], "is not empty and is not an earlier export of Tunelab")
            .file("notes.txt", "my thesis").file("data/train.csv", TRAIN_CSV),
        case("export_into_export_with_user_file", &["export", "--checkpoint", &run_dir.display().to_string(), "--out", "@/ex"], "(it holds mine.txt)")
            .copy(&run_dir.join("final"), "ex").file("ex/mine.txt", "keep me"),
        case("export_into_a_file", &["export", "--checkpoint", &run_dir.display().to_string(), "--out", "@/file.bin"], "is a file, not a folder").file("file.bin", "x"),
        case("export_checkpoint_missing", &["export", "--checkpoint", "@/none", "--out", "@/ex"], "reading @/none"),
        case("export_not_a_checkpoint", &["export", "--checkpoint", "@/w.safetensors", "--out", "@/ex"], "not a Tunelab checkpoint")
            .file("w.safetensors", safetensors(&[("x", "F32", vec![1], f32_bytes(&[1.0]))])),
        case("export_checkpoint_garbage", &["export", "--checkpoint", "@/c.safetensors", "--out", "@/ex"], "@/c.safetensors").file("c.safetensors", "not safetensors at all"),
        case("train_into_finished_run", &[], "is not empty (it holds").also("nothing was changed. Continue that run with `--resume")
            .file("d.csv", TRAIN_CSV).copy(run_dir, "run")
            .edit(|_| {}),
        case("train_into_user_folder", &[], "output folder @/mine is not empty").file("d.csv", TRAIN_CSV).file("mine/final/keep.txt", "mine"),
        case("train_output_dir_is_a_file", &[], "is a file; give a folder for the run").file("d.csv", TRAIN_CSV).file("out.txt", "x"),
        case("resume_finished_run", &["train", "--resume", "@/run"], "already finished (step 2 of 2); nothing was changed").copy(run_dir, "run"),
        case("resume_without_config", &["train", "--resume", "@/run"], "resuming: reading @/run/train_config.json").file("run/metrics.jsonl", "{}\n"),
        case("resume_checkpoint_missing", &["train", "--resume", "@/run"], "resuming: reading @/run/checkpoint/checkpoint.safetensors")
            .copy(run_dir, "run").edit(|d| std::fs::remove_dir_all(d.join("run/checkpoint")).unwrap()),
        case("resume_checkpoint_corrupt", &["train", "--resume", "@/run"], "checkpoint.safetensors")
            .copy(run_dir, "run").edit(|d| std::fs::write(d.join("run/checkpoint/checkpoint.safetensors"), b"\x08\0\0\0\0\0\0\0{}").unwrap()),
        case("resume_config_corrupt", &["train", "--resume", "@/run"], "@/run/train_config.json")
            .copy(run_dir, "run").edit(|d| std::fs::write(d.join("run/train_config.json"), "{\"task\": 1}").unwrap()),
        {
            // The last update diverges: no export and no checkpoint of non-finite weights.
            let mut c = case("diverges_on_the_last_step", &[], "training stopped: step 2: the update made the weights non-finite").also("no checkpoint had been saved yet")
                .file("d.csv", TRAIN_CSV)
                .creates("out");
            c.args = train_on("@/d.csv", &["--lr", "1e30"]);
            c.args[10] = "2".into(); // --max-steps 2
            c
        },
        {
            // --overwrite-output-dir, and the new run fails: the earlier run comes back intact.
            let mut c = case("overwrite_then_fail_restores", &[], "training stopped").also("were put back")
                .file("d.csv", TRAIN_CSV)
                .copy(run_dir, "out");
            c.args = train_on("@/d.csv", &["--lr", "1e30", "--overwrite-output-dir"]);
            c.args[10] = "2".into();
            c
        },
    ];
    let mut cases = cases;
    for c in cases.iter_mut() {
        if c.name == "train_into_finished_run" {
            c.args = train_on("@/d.csv", &[]);
            c.args[12] = "@/run".into();
        }
        if c.name == "train_into_user_folder" {
            c.args = train_on("@/d.csv", &[]);
            c.args[12] = "@/mine".into();
        }
        if c.name == "train_output_dir_is_a_file" {
            c.args = train_on("@/d.csv", &[]);
            c.args[12] = "@/out.txt".into();
        }
    }
    run("exports", cases);
}
