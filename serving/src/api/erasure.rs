//! `DELETE /v1/users/{id}`: erasure.

#![allow(unused_qualifications)]

use super::*;

/// The answer to `DELETE /v1/users/{id}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"user_id": "u-42", "erased_at": "2026-12-06T10:05:00.000Z", "erased_ms": 1765015500000_i64, "keys_deleted": 6}))]
pub struct EraseResponse {
    /// The user erased.
    pub user_id: String,
    /// The erasure's time (RFC 3339): the user's events accepted until then are gone from the
    /// online store now and from every batch run from now on; later events are new activity.
    pub erased_at: String,
    /// The same, epoch ms.
    pub erased_ms: i64,
    /// Keys deleted from the online store.
    pub keys_deleted: u64,
}

/// Erases a user (ARCHITECTURE.md §7): records a tombstone in the lake, which every later batch run
/// honours, then deletes the user's speed deltas, recent event ids and snapshot row from the
/// online store. The user's events still on their way to the speed layer are skipped when they
/// arrive. Idempotent: repeating it erases again, at the new time.
#[utoipa::path(
    delete,
    path = "/v1/users/{id}",
    params(("id" = String, Path, description = "The user id")),
    responses(
        (status = 200, description = "The user is erased", body = EraseResponse),
        (status = 400, description = "The id breaks the id rules (`invalid_path`): no event of it can be stored", body = ErrorBody),
        (status = 401, description = "No key, or not a valid one (`unauthorized`)", body = ErrorBody), (status = 403, description = "The key lacks the `admin` scope", body = ErrorBody),
        (status = 503, description = "The lake or the online store is unavailable: retry; a tombstone already written stays", body = ErrorBody)
    ),
    security(("api_key" = [])),
    tag = "users"
)]
pub async fn delete_user(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<Json<EraseResponse>, ApiError> {
    app.keys.check(&headers, Scope::Admin)?;
    path_id("user", &user)?;
    let erased_ms = now_ms();
    // The tombstone first: once it is written, no batch run that starts later brings the user
    // back, whatever happens to the store call after it.
    let tombstone = tandem_common::lake::Tombstone {
        user_id: user.clone(),
        erased_ms,
    };
    let recorded = tokio::time::timeout(app.opts.bus_timeout, app.lake.record_erasure(&tombstone));
    match recorded.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "writing an erasure tombstone failed");
            return Err(ApiError::unavailable(
                "lake_unavailable",
                "the lake is unavailable; nothing was erased, retry later",
                1,
            ));
        }
        Err(_) => {
            return Err(ApiError::unavailable(
                "lake_unavailable",
                "the lake did not answer in time; retry later",
                1,
            ));
        }
    }
    // Erased for this server from now on, whatever happens to the store call.
    app.note_erasure(&user, erased_ms);
    // The rows of the snapshot served now; older ones are gone or going (the batch's cleanup),
    // and serving leaves out any row of a snapshot cut before the erasure.
    let snap = app.snapshots.current();
    let ids: Vec<String> = snap.iter().map(|s| s.id().to_string()).collect();
    let erase = app.store.erase_user(&user, erased_ms, &ids);
    let keys_deleted = timed("erase_user", app.opts.bus_timeout, erase)
        .await
        .map_err(store_unavailable)?;
    if let Some(s) = &snap {
        s.forget_user(&user);
    }
    tracing::info!(keys_deleted, "user erased");
    metrics::counter!("tandem_serving_erasures_total").increment(1);
    Ok(Json(EraseResponse {
        user_id: user,
        erased_at: rfc3339(erased_ms).map_or_else(String::new, |t| t.to_string()),
        erased_ms,
        keys_deleted,
    }))
}
