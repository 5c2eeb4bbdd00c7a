//! The OpenAPI document of the v1 API, generated from the routes' own annotations, and its
//! route, `/openapi.json`.

use axum::Json;
use axum::response::IntoResponse;
use utoipa::OpenApi;

/// The OpenAPI document, served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tandem",
        description = "Real-time personalization: events in; profiles, segments, propensity and recommendations out."
    ),
    paths(
        crate::api::post_events,
        crate::api::get_profile,
        crate::api::get_recommendations,
        crate::api::delete_user,
        crate::api::get_similar,
        crate::api::get_popular,
        crate::ops::healthz,
        crate::ops::readyz
    ),
    components(schemas(crate::error::ErrorBody, crate::api::EventDoc, crate::api::EventsBody, crate::api::InvalidEventsBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key from `[server].api_keys`, with the route's scope.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of the v1 API.
pub async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
