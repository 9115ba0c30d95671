//! The first-position encoder, and exports: PEFT's key names, and imports that rebuild the
//! same model (ours and a plain PEFT adapter folder).

use super::*;

/// Keys PEFT 0.21.2 writes for this tiny BERT (`save_pretrained` of `get_peft_model`).
const PEFT_LORA_KEYS: &[&str] = &[
    "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight",
    "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight",
    "base_model.model.bert.encoder.layer.0.attention.self.value.lora_A.weight",
    "base_model.model.bert.encoder.layer.0.attention.self.value.lora_B.weight",
    "base_model.model.bert.encoder.layer.1.attention.self.query.lora_A.weight",
    "base_model.model.bert.encoder.layer.1.attention.self.query.lora_B.weight",
    "base_model.model.bert.encoder.layer.1.attention.self.value.lora_A.weight",
    "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight",
    "base_model.model.classifier.bias",
    "base_model.model.classifier.weight",
];
const PEFT_PROMPT_KEYS: &[&str] = &[
    "base_model.classifier.bias",
    "base_model.classifier.weight",
    "prompt_embeddings",
];

/// Sequence classification runs the last layer at position 0 only (`Bert::encode_first`): the
/// same hidden state and the same gradient for every parameter as the full encoder sliced at
/// position 0, on padded rows of different lengths (one of a single token).
#[test]
fn the_first_position_encoder_equals_the_full_one_sliced() {
    use tunelab_core::nn::Ctx;
    use tunelab_core::tape::Tape;
    let (model, store) = build(
        TaskKind::Classification,
        &Method::Full(Default::default()),
        3,
    );
    let be = Candle::cpu();
    let (batch, len) = (3, 7);
    let mut rng = Rng::new(4);
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for real in [7, 4, 1] {
        for t in 0..len {
            ids.push(if t < real {
                5 + rng.below(56) as u32
            } else {
                0
            });
            mask.push(if t < real { 1.0 } else { 0.0 });
        }
    }
    let input = model.input(&be, &store, &ids, &mask, batch, len).unwrap();
    let c = model.config.dims().hidden_size;
    // The hidden state at position 0 read as logits over `c` classes gives a loss that
    // reaches every encoder parameter.
    let labels = be
        .upload_u32(&[1, 5, 9], &tunelab_core::Shape::new([batch]))
        .unwrap();
    let run = |first: bool| {
        let mut tape = Tape::new(be.clone());
        let bound = store.bind(&mut tape);
        let mut cx = Ctx {
            tape: &mut tape,
            bound: &bound,
            adapters: &model.adapters,
            dropout: None,
        };
        let h = if first {
            model.encoder.encode_first(&mut cx, &input, None).unwrap()
        } else {
            let h = model.encoder.encode(&mut cx, &input, None).unwrap();
            cx.tape.slice_seq(h, 0, 1).unwrap()
        };
        let x = cx
            .tape
            .reshape(h, &tunelab_core::Shape::new([batch, c]))
            .unwrap();
        let loss = cx.tape.cross_entropy(x, &labels, 1.0).unwrap();
        let value = pollster::block_on(be.download(tape.value(h).unwrap())).unwrap();
        tape.backward(loss).unwrap();
        let grads: Vec<Option<Vec<f32>>> = store
            .grads(&mut tape, &bound)
            .into_iter()
            .map(|(_, g)| g.map(|g| pollster::block_on(be.download(&g)).unwrap()))
            .collect();
        (value, grads)
    };
    let (first, first_grads) = run(true);
    let (full, full_grads) = run(false);
    assert_eq!(first.len(), batch * c);
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, nan_max)
    };
    assert!(diff(&first, &full) < 1e-5, "{first:?} vs {full:?}");
    // The encoder's 2 × 16 + 5 tensors reach the loss; the pooler and classifier do not.
    let reached = full_grads.iter().filter(|g| g.is_some()).count();
    assert_eq!(reached, 5 + 16 * model.config.dims().num_hidden_layers);
    for (i, (a, b)) in first_grads.iter().zip(&full_grads).enumerate() {
        let (a, b) = (a.as_ref(), b.as_ref());
        assert_eq!(a.is_some(), b.is_some(), "parameter {i}");
        if let (Some(a), Some(b)) = (a, b) {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            assert!(diff(a, b) <= 1e-4 * scale, "parameter {i}: {a:?} vs {b:?}");
        }
    }
}

fn logits(t: &Trainer<Candle>, model: &TaskModel<Candle>, store: &ParamStore<Candle>) -> Vec<f32> {
    let f = features(TaskKind::Classification, 5);
    let b = tunelab_core::data::build_batch(&f, &[0, 1, 2, 3, 4], 0, None);
    let input = model
        .input(&t.backend, store, &b.ids, &b.mask, b.batch, b.len)
        .unwrap();
    let f = model
        .forward(&t.backend, store, &input, None, false)
        .unwrap();
    pollster::block_on(t.backend.download(f.tape.value(f.logits).unwrap())).unwrap()
}

#[test]
fn exports_use_peft_names_and_import_to_the_same_model() {
    let prompt = Method::Prompt(PromptConfig {
        num_virtual_tokens: 5,
        init_token_ids: vec![],
    });
    for method in [
        lora(),
        prompt,
        Method::Ia3(Default::default()),
        Method::Bitfit(Default::default()),
        Method::Full(Default::default()),
    ] {
        let mut t = trainer(
            TaskKind::Classification,
            method.clone(),
            TrainConfig {
                batch_size: 4,
                max_steps: Some(2),
                lr: Some(1e-2),
                ..Default::default()
            },
            8,
        );
        for _ in 0..2 {
            pollster::block_on(t.train_step()).unwrap();
        }
        let info = ExportInfo {
            task: TaskKind::Classification,
            labels: labels(),
            base_model: "tiny-bert".into(),
            max_len: 32,
            base_config_json: std::fs::read_to_string(tiny().join("config.json")).unwrap(),
        };
        let files: BTreeMap<String, Vec<u8>> =
            pollster::block_on(export::export(&t.backend, &t.model, &t.store, &info))
                .unwrap()
                .into_iter()
                .collect();
        let weights = match &method {
            Method::Lora(_) | Method::Prompt(_) | Method::Ia3(_) => export::ADAPTER_WEIGHTS,
            Method::Bitfit(_) => export::BITFIT_WEIGHTS,
            Method::Full(_) => "model.safetensors",
        };
        let (saved, _) = read(weights, &files[weights]).unwrap();
        let keys: Vec<&str> = saved.keys().map(String::as_str).collect();
        match &method {
            Method::Lora(_) => {
                assert_eq!(keys, PEFT_LORA_KEYS);
                let cfg: serde_json::Value =
                    serde_json::from_slice(&files[export::ADAPTER_CONFIG]).unwrap();
                assert_eq!(cfg["peft_type"], "LORA");
                assert_eq!(cfg["task_type"], "SEQ_CLS");
                assert_eq!(cfg["r"], 4);
                assert_eq!(cfg["modules_to_save"], serde_json::json!(["classifier"]));
            }
            Method::Ia3(_) => {
                // Keys and values are scaled at their output, both `output.dense` layers at
                // their input, as PEFT does.
                let dims = |k: &str| saved[k].shape.dims().to_vec();
                let l0 = "base_model.model.bert.encoder.layer.0";
                assert_eq!(dims(&format!("{l0}.attention.self.key.ia3_l")), [16, 1]);
                assert_eq!(dims(&format!("{l0}.attention.self.value.ia3_l")), [16, 1]);
                assert_eq!(dims(&format!("{l0}.attention.output.dense.ia3_l")), [1, 16]);
                assert_eq!(dims(&format!("{l0}.output.dense.ia3_l")), [1, 20]);
                assert_eq!(keys.len(), 2 * 4 + 2, "{keys:?}");
                let cfg: serde_json::Value =
                    serde_json::from_slice(&files[export::ADAPTER_CONFIG]).unwrap();
                assert_eq!(cfg["peft_type"], "IA3");
                assert_eq!(
                    cfg["feedforward_modules"],
                    serde_json::json!(["output.dense"])
                );
                assert_eq!(cfg["modules_to_save"], serde_json::json!(["classifier"]));
            }
            Method::Prompt(_) => {
                assert_eq!(keys, PEFT_PROMPT_KEYS);
                assert_eq!(saved["prompt_embeddings"].shape.dims(), &[5, 16]);
            }
            Method::Bitfit(_) => {
                assert!(
                    keys.iter()
                        .all(|k| k.ends_with(".bias") || k.starts_with("classifier."))
                );
                assert!(keys.contains(&"bert.encoder.layer.1.output.dense.bias"));
            }
            Method::Full(_) => {
                assert!(keys.contains(&"bert.embeddings.word_embeddings.weight"));
                assert!(keys.contains(&"classifier.weight"));
                let cfg: serde_json::Value = serde_json::from_slice(&files["config.json"]).unwrap();
                assert_eq!(cfg["id2label"]["1"], "B-X");
            }
        }
        // Import into a freshly built model (different random init) → identical logits.
        let imported = export::import(&files).unwrap();
        assert_eq!(imported.manifest.method, method);
        assert_eq!(imported.manifest.labels, labels());
        let (model, mut store) = build(TaskKind::Classification, &method, 12345);
        export::apply(&t.backend, &mut store, &imported.tensors, "export").unwrap();
        let (a, b) = (logits(&t, &t.model, &t.store), logits(&t, &model, &store));
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, nan_max);
        assert!(d < 1e-6, "{}: logits differ by {d}", method.name());
    }
}

#[test]
fn a_peft_adapter_without_tunelab_manifest_imports() {
    let t = trainer(TaskKind::Classification, lora(), TrainConfig::default(), 4);
    let info = ExportInfo {
        task: TaskKind::Classification,
        labels: labels(),
        base_model: "tiny-bert".into(),
        max_len: 32,
        base_config_json: "{}".into(),
    };
    let mut files: BTreeMap<String, Vec<u8>> =
        pollster::block_on(export::export(&t.backend, &t.model, &t.store, &info))
            .unwrap()
            .into_iter()
            .collect();
    files.remove(export::MANIFEST);
    let imported = export::import(&files).unwrap();
    assert_eq!(imported.manifest.method, lora());
    assert_eq!(imported.manifest.task, TaskKind::Classification);
    assert_eq!(imported.manifest.labels.len(), 3);
    assert!(
        imported
            .tensors
            .contains_key("encoder.layer.0.attention.self.query.lora_A.weight")
    );
    // A tensor the model lacks is refused by name.
    let mut bad = imported.tensors.clone();
    let t0 = bad.values().next().unwrap().clone();
    bad.insert(
        "encoder.layer.9.attention.self.query.lora_A.weight".into(),
        t0,
    );
    let (_, mut store) = build(TaskKind::Classification, &lora(), 1);
    let e = export::apply(
        &Candle::cpu(),
        &mut store,
        &bad,
        "adapter_model.safetensors",
    )
    .unwrap_err();
    assert!(e.to_string().contains("layer.9"), "{e}");
}
