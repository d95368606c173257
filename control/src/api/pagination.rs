//! `count`/`offset` paging with `Link` headers (`rel="next"`, `rel="prev"`).

use axum::http::HeaderValue;
use serde::Deserialize;

use super::error::ApiError;
use crate::store::Page;

/// Default page size.
pub const DEFAULT_COUNT: u64 = 100;
/// Largest page size.
pub const MAX_COUNT: u64 = 1000;

/// The paging parameters of a list request. Any other query parameter is refused, so a filter
/// the route does not have (`?host=…`) is not silently ignored.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// Page size (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub count: Option<u64>,
    /// Items to skip.
    pub offset: Option<u64>,
}

impl PageParams {
    /// The page asked for, one item longer than returned so the handler can tell whether a next
    /// page exists.
    pub fn page(&self) -> Result<Page, ApiError> {
        let count = self.count.unwrap_or(DEFAULT_COUNT);
        if !(1..=MAX_COUNT).contains(&count) {
            return Err(ApiError::invalid(format!(
                "count must be between 1 and {MAX_COUNT}"
            )));
        }
        Ok(Page {
            offset: self.offset.unwrap_or(0),
            count,
        })
    }
}

/// Fetches `page.count + 1` items through `fetch`, trims to `page.count`, and builds the `Link`
/// header for `path` with the extra query `filters` (already URL-safe).
pub fn link_header(
    path: &str,
    filters: &[(&str, String)],
    page: Page,
    has_next: bool,
) -> Option<HeaderValue> {
    let base: String = filters.iter().map(|(k, v)| format!("{k}={v}&")).collect();
    let mut links = Vec::new();
    if has_next {
        links.push(format!(
            "<{path}?{base}count={}&offset={}>; rel=\"next\"",
            page.count,
            page.offset + page.count
        ));
    }
    if page.offset > 0 {
        links.push(format!(
            "<{path}?{base}count={}&offset={}>; rel=\"prev\"",
            page.count,
            page.offset.saturating_sub(page.count)
        ));
    }
    if links.is_empty() {
        None
    } else {
        HeaderValue::from_str(&links.join(", ")).ok()
    }
}

/// A page of a list the library answered whole (lists bounded by what one caller may see,
/// such as vaults): `{"list": [...]}` with the `Link` header for `path`.
pub fn paged<T: serde::Serialize>(
    path: &str,
    mut items: Vec<T>,
    params: &PageParams,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    let page = params.page()?;
    let total = items.len() as u64;
    let start = usize::try_from(page.offset.min(total)).unwrap_or(usize::MAX);
    let mut list = items.split_off(start.min(items.len()));
    list.truncate(usize::try_from(page.count).unwrap_or(usize::MAX));
    let has_next = page.offset.saturating_add(page.count) < total;
    let mut headers = axum::http::HeaderMap::new();
    if let Some(link) = link_header(path, &[], page, has_next) {
        headers.insert(axum::http::header::LINK, link);
    }
    Ok((
        headers,
        axum::Json(latch_common::api::ListResponse { list }),
    )
        .into_response())
}
