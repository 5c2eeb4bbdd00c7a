//! The views and the models of a run: folded from the events up to the cutoff.

use super::*;

/// The latent-factor model of the users' baskets of `baskets` (`None`: too little to learn).
pub(super) fn fit_latent(baskets: &Baskets, opts: &LatentOptions) -> Option<Latent> {
    // The user rows only, renumbered densely (their items keep the baskets' numbers).
    let (mut offsets, mut members) = (vec![0], Vec::new());
    for b in (0..baskets.len()).filter(|&b| baskets.by_user[b]) {
        members.extend_from_slice(baskets.basket(b));
        offsets.push(members.len());
    }
    let rows = Rows {
        offsets: &offsets,
        members: &members,
    };
    Latent::fit(baskets.items.clone(), rows, opts)
}

pub(super) async fn compute(
    lake: &Lake,
    cutoff: i64,
    opts: &RunOptions,
    checkpoint: &dyn Checkpoint,
    progress: &dyn Progress,
    durations: &mut BTreeMap<String, f64>,
) -> Result<Computed> {
    begin(Step::Views, checkpoint, progress)?;
    let t = Instant::now();
    // The run's scratch files in the lake (a remote engine's), removed at the end.
    let scratch = format!("{cutoff}-{}-{}", std::process::id(), opts.now_ms);
    let lc = views_context(lake, &opts.engine, &scratch)
        .await?
        .with_cutoff(cutoff)
        .await?;
    // Locally the deduplicated events are computed once and kept in memory for the views and
    // the models. On a cluster the views read the lake there, and the models' inputs stream
    // here: the event times first (the window), then the events folded as they come.
    let events = match opts.engine {
        BatchEngine::Local => Some(lc.materialise().await?),
        BatchEngine::Ballista(_) => None,
    };
    let remote_times = match events {
        Some(_) => None,
        None => Some(event_times(&lc).await?),
    };
    let n_events: u64 = match (&events, &remote_times) {
        (Some(ev), _) => ev.iter().map(|b| b.num_rows() as u64).sum(),
        (None, Some(t)) => t.len() as u64,
        (None, None) => 0,
    };
    let set_aside = lc.set_aside().await?;
    if set_aside > 0 {
        tracing::warn!(
            rows = set_aside,
            "Stored events that validation refuses (price or quantity out of bounds) were set aside."
        );
    }
    let profile_batches = View::Profiles.collect(&lc).await?;
    let item_batches = View::Items.collect(&lc).await?;
    let basket_rows = basket_rows(&lc, i64::MAX).await?;
    let baskets = Arc::new(Baskets::from_batches(&basket_rows)?);
    let similar_batches = similar_of(baskets.clone()).await?;
    let profiles = profiles_from(&profile_batches)?;
    let items = items_from(&item_batches)?;
    let similar = similar_from(&similar_batches)?;
    durations.insert(name(Step::Views).into(), t.elapsed().as_secs_f64());

    begin(Step::Train, checkpoint, progress)?;
    let t = Instant::now();
    // Event time ends at the cutoff, or earlier for history loaded in bulk after the fact.
    let max_ts = match &remote_times {
        Some(t) => t.iter().copied().max(),
        None => events
            .iter()
            .flatten()
            .filter_map(|b| b.column_by_name("ts"))
            .filter_map(|c| {
                datafusion::arrow::compute::max(c.as_primitive::<TimestampMillisecondType>())
            })
            .max(),
    };
    let end = max_ts.map_or(cutoff, |t| (t + 1).min(cutoff));
    // The window widens when the data is too sparse near its end for the configured one: a
    // spread sample of at most ~1M event times tells.
    let step = (n_events as usize / 1_000_000).max(1);
    let mut times: Vec<i64> = match remote_times {
        Some(t) => t.into_iter().step_by(step).collect(),
        None => events
            .iter()
            .flatten()
            .filter_map(|b| b.column_by_name("ts"))
            .flat_map(|c| {
                c.as_primitive::<TimestampMillisecondType>()
                    .values()
                    .iter()
                    .step_by(step)
                    .copied()
                    .collect::<Vec<i64>>()
            })
            .collect(),
    };
    let window = tandem_models::training::adapt_window(&mut times, end, opts.window_ms);
    drop(times);
    if window != opts.window_ms {
        tracing::info!(
            configured_days = opts.window_ms as f64 / 86_400_000.0,
            days = window as f64 / 86_400_000.0,
            "The data is sparse near its end: the models' window is widened."
        );
    }
    let split = Split::new(end, window);
    // The similar lists as they were at the start of the label period: the ranker learns from
    // the co-occurrences of the events before its labels only.
    let listing = Instant::now();
    let baskets_t1 = Arc::new(baskets_before(&lc, split.train_from_ms).await?);
    let similar_t1 = similar_of(baskets_t1.clone()).await?;
    let similar_t1: SimilarLists = similar_from(&similar_t1)?
        .into_iter()
        .map(|(i, list)| (i, list.into_iter().map(|s| (s.item, s.score)).collect()))
        .collect();
    tracing::info!(
        seconds = listing.elapsed().as_secs_f64(),
        items = similar_t1.len(),
        "Similar items before the label period listed."
    );
    let folding = Instant::now();
    let history = match &events {
        Some(events) => fold_history(events, split)?,
        None => fold_stream(&lc, split).await?,
    };
    tracing::info!(
        seconds = folding.elapsed().as_secs_f64(),
        events = history.events(),
        "History folded."
    );
    drop(events);
    drop(lc);
    #[cfg(feature = "ballista")]
    if let BatchEngine::Ballista(_) = opts.engine
        && let Err(e) = crate::engine::remove_scratch(lake, &scratch).await
    {
        tracing::warn!(error = %e, "Could not remove the run's scratch files.");
    }
    // Off the async threads; the profiles go along and come back rather than being copied.
    let (train_opts, latent_opts) = (opts.train.clone(), opts.train.latent);
    let (trained, profiles) = tokio::task::spawn_blocking(move || {
        // The latent factors: of the users' baskets before the label period for the ranker to
        // learn from, then of all of them for serving.
        let fitting = Instant::now();
        let latent_t1 = fit_latent(&baskets_t1, &latent_opts);
        drop(baskets_t1);
        let trained = train(
            history,
            &profiles,
            &similar_t1,
            latent_t1.as_ref(),
            &train_opts,
        );
        let latent_s = fitting.elapsed().as_secs_f64();
        let fitting = Instant::now();
        let latent = fit_latent(&baskets, &latent_opts);
        tracing::info!(
            seconds_before_labels = latent_s,
            seconds = fitting.elapsed().as_secs_f64(),
            items = latent.as_ref().map_or(0, |l| l.items.len()),
            "Latent factors fitted."
        );
        let trained = trained.map(|mut m| {
            m.latent = latent;
            m
        });
        (trained, profiles)
    })
    .await
    .map_err(|e| Error::Internal(format!("training task: {e}")))?;
    let (models, models_entry) = match trained {
        Ok(m) => {
            let entry = ModelsEntry::Trained(m.metrics.clone());
            (Some(m), entry)
        }
        Err(tandem_models::Error::NotEnoughData(why)) => {
            tracing::warn!(reason = %why, "Models not trained.");
            (None, ModelsEntry::Skipped(why))
        }
        Err(e) => return Err(e.into()),
    };
    let scores = scores_of(models.as_ref(), &profiles, cutoff);
    durations.insert(name(Step::Train).into(), t.elapsed().as_secs_f64());

    let rows = rows_of(
        profiles.len(),
        items.len(),
        similar.values().map(Vec::len).sum(),
        scores.len(),
    );
    let segments = segments_batch(&scores, models.as_ref())?;
    Ok(Computed {
        events: n_events,
        set_aside,
        models,
        models_entry,
        rows,
        files: vec![
            ("profiles", profile_batches),
            ("items", item_batches),
            ("similar_items", similar_batches),
            ("baskets", basket_rows),
            ("segments", vec![segments]),
        ],
        full_cutoff_ms: None,
        carry: None,
    })
}

/// The columns of `segments.parquet`.
pub(super) fn segments_schema() -> datafusion::arrow::datatypes::SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("segment", DataType::UInt32, true),
        Field::new("segment_label", DataType::Utf8, true),
        Field::new("propensity", DataType::Float64, true),
    ]))
}

/// Rows per output file.
pub(super) fn rows_of(
    profiles: usize,
    items: usize,
    similar: usize,
    segments: usize,
) -> BTreeMap<String, u64> {
    BTreeMap::from([
        ("profiles".into(), profiles as u64),
        ("items".into(), items as u64),
        ("similar_items".into(), similar as u64),
        ("segments".into(), segments as u64),
    ])
}

/// Each user's segment and propensity under `models` (none without models).
pub(super) fn scores_of(
    models: Option<&Models>,
    profiles: &BTreeMap<String, Profile>,
    cutoff: i64,
) -> BTreeMap<String, (Option<u32>, Option<f64>)> {
    match models {
        Some(m) if m.segments.is_some() || m.propensity.is_some() => profiles
            .iter()
            .map(|(u, p)| {
                let f = user_features(p, cutoff);
                (
                    u.clone(),
                    (
                        m.segments.as_ref().map(|s| s.assign(&f) as u32),
                        m.propensity.as_ref().map(|p| p.probability(&f)),
                    ),
                )
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// A lake session on `engine`, with the lake's tables.
async fn views_context(lake: &Lake, engine: &BatchEngine, scratch: &str) -> Result<LakeContext> {
    match engine {
        BatchEngine::Local => Ok(LakeContext::new(lake).await?),
        #[cfg(feature = "ballista")]
        BatchEngine::Ballista(scheduler) => {
            crate::engine::lake_context(lake, scheduler, scratch).await
        }
        #[cfg(not(feature = "ballista"))]
        BatchEngine::Ballista(_) => {
            let _ = scratch;
            Err(Error::User(
                "batch.engine names a Ballista scheduler, but this tandem was built without the `ballista` feature".into(),
            ))
        }
    }
}

/// The event time of every event of the view `events` (epoch ms), as the engine sends them.
async fn event_times(lc: &LakeContext) -> Result<Vec<i64>> {
    let batches = lc
        .ctx
        .sql("SELECT CAST(ts AS BIGINT) AS t FROM events")
        .await?
        .collect()
        .await?;
    let mut out = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for b in &batches {
        let c = cast(b.column(0), &DataType::Int64)?;
        out.extend_from_slice(
            c.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .values(),
        );
    }
    Ok(out)
}

/// Folds the events of the view `events` into the models' history as they stream from the
/// engine: the batch process never holds them all.
async fn fold_stream(lc: &LakeContext, split: Split) -> Result<History> {
    use futures::StreamExt;
    let mut stream = lc
        .ctx
        .sql("SELECT user_id, kind, item_id, category, price, quantity, ts FROM events")
        .await?
        .execute_stream()
        .await?;
    let mut h = History::new(split);
    while let Some(b) = stream.next().await {
        fold_batch(&b?, &mut h)?;
    }
    Ok(h)
}

/// Folds the deduplicated events into the models' history, on two threads.
pub(super) fn fold_history(events: &[RecordBatch], split: Split) -> Result<History> {
    let half = events.len() / 2;
    let (a, b) = events.split_at(half);
    let fold = |part: &[RecordBatch]| -> Result<History> {
        let mut h = History::new(split);
        for batch in part {
            fold_batch(batch, &mut h)?;
        }
        Ok(h)
    };
    let (ha, hb) = std::thread::scope(|s| {
        let ta = s.spawn(|| fold(a));
        let hb = fold(b);
        (ta.join(), hb)
    });
    let mut h = ha.map_err(|_| Error::Internal("history fold panicked".into()))??;
    h.merge(hb?);
    Ok(h)
}

pub(super) fn fold_batch(b: &RecordBatch, h: &mut History) -> Result<()> {
    let col = |n: &str| {
        b.column_by_name(n)
            .ok_or_else(|| Error::Internal(format!("events have no column `{n}`")))
    };
    let utf8 = |n: &str| -> Result<StringArray> {
        Ok(cast(col(n)?, &DataType::Utf8)?.as_string::<i32>().clone())
    };
    let (users, kinds, items, cats) = (
        utf8("user_id")?,
        utf8("kind")?,
        utf8("item_id")?,
        utf8("category")?,
    );
    let price = cast(col("price")?, &DataType::Float64)?;
    let price = price.as_primitive::<Float64Type>();
    let qty = cast(col("quantity")?, &DataType::UInt32)?;
    let qty = qty.as_primitive::<datafusion::arrow::datatypes::UInt32Type>();
    let ts = col("ts")?.as_primitive::<TimestampMillisecondType>();
    fn opt(a: &StringArray, i: usize) -> Option<std::borrow::Cow<'_, str>> {
        a.is_valid(i)
            .then(|| std::borrow::Cow::Borrowed(a.value(i)))
    }
    for i in 0..b.num_rows() {
        let kind = Kind::parse(kinds.value(i)).ok_or_else(|| {
            Error::Internal(format!("unknown kind `{}` in the lake", kinds.value(i)))
        })?;
        let e = Event {
            event_id: std::borrow::Cow::Borrowed(""),
            user_id: std::borrow::Cow::Borrowed(users.value(i)),
            kind,
            item_id: opt(&items, i),
            category: opt(&cats, i),
            price: price.is_valid(i).then(|| price.value(i)),
            quantity: if qty.is_valid(i) { qty.value(i) } else { 1 },
            rating: None,
            query: None,
            ts: ts.value(i),
            session_id: None,
            props: None,
        };
        h.add(&e);
    }
    Ok(())
}

/// The popular lists: top items overall and per category.
pub(super) fn popular_row(items: &BTreeMap<String, ItemStats>) -> PopularRow {
    let map: HashMap<String, ItemStats> =
        items.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let pool = ItemPool::new(map, POPULAR_TOP);
    let mut categories: Vec<(String, Vec<String>)> = pool.by_category.into_iter().collect();
    if categories.len() > MAX_POPULAR_CATEGORIES {
        // The categories whose best item is the most popular; ties by name.
        let best = |list: &[String]| {
            list.first()
                .and_then(|i| items.get(i))
                .map_or(f64::NEG_INFINITY, |s| s.popularity)
        };
        categories.sort_by(|a, b| {
            best(&b.1)
                .total_cmp(&best(&a.1))
                .then_with(|| a.0.cmp(&b.0))
        });
        categories.truncate(MAX_POPULAR_CATEGORIES);
    }
    PopularRow {
        overall: pool.popular,
        by_category: categories.into_iter().collect(),
    }
}

/// Items kept in each popular list.
pub const POPULAR_TOP: usize = 100;

/// Categories with a popular list in a snapshot: those whose best item is the most popular.
/// Every server holds the lists in memory, and one list per category grew without bound (60,000
/// categories took `serve` from 130 to 205 MiB); a rarer category's items still come through
/// the similar items and the latent model.
pub const MAX_POPULAR_CATEGORIES: usize = 1_000;

pub(super) fn segments_batch(
    scores: &BTreeMap<String, (Option<u32>, Option<f64>)>,
    models: Option<&Models>,
) -> Result<RecordBatch> {
    let schema = segments_schema();
    let label = |s: Option<u32>| {
        let segments = models.and_then(|m| m.segments.as_ref())?;
        segments.labels.get(s? as usize).cloned()
    };
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(scores.keys())),
            Arc::new(UInt32Array::from_iter(scores.values().map(|v| v.0))),
            Arc::new(StringArray::from_iter(scores.values().map(|v| label(v.0)))),
            Arc::new(Float64Array::from_iter(scores.values().map(|v| v.1))),
        ],
    )?)
}
