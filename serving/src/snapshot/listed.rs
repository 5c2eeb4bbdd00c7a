//! The listed rows of a snapshot: the items of its popular lists and those similar to them,
//! loaded with the snapshot, numbered, with what ranking reads of each ready.

use super::*;

/// The rows of `items` in snapshot `snapshot`, in order (`None`: the item has no row), in one
/// store call timed as `op`.
pub(super) async fn fetch_item_rows(
    store: &dyn OnlineStore,
    snapshot: &str,
    items: &[&str],
    op: &'static str,
    timeout: Duration,
) -> Result<Vec<Option<ItemRow>>, StoreFailure> {
    let keys: Vec<String> = items.iter().map(|i| item_key(i, snapshot)).collect();
    let got = timed(op, timeout, store.get(&keys)).await?;
    let decode = |(key, value): (&String, Option<bytes::Bytes>)| match value {
        Some(b) => serde_json::from_slice::<ItemRow>(&b)
            .map(Some)
            .map_err(|e| bad_row("item", key, e)),
        None => Ok(None),
    };
    keys.iter().zip(got).map(decode).collect()
}

/// An item as a request's candidates name it: one of the snapshot's listed rows by its place,
/// any other by its id. An item has one name only (see [`Loaded::resolve`]), so equal names are
/// equal items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemId<'a> {
    /// The listed row of this number ([`Loaded::listed`]).
    Listed(u32),
    /// An item not among the listed rows.
    Unlisted(&'a str),
}

impl<'a> ItemId<'a> {
    pub(super) fn of(name: &'a str, listed: Option<u32>) -> ItemId<'a> {
        listed.map_or(ItemId::Unlisted(name), ItemId::Listed)
    }
}

/// A listed row, loaded with the snapshot, with what ranking reads of it ready.
#[derive(Debug)]
pub struct ListedItem {
    /// Its number ([`ItemId::Listed`]).
    pub number: u32,
    /// The item.
    pub id: String,
    /// Its row.
    pub row: ItemRow,
    /// Its side of the ranker's features.
    pub side: ItemSide,
    /// Its terms of the snapshot's ranker's logit (zero without a ranker).
    pub terms: ItemTerms,
    /// The number of its category ([`Loaded::category_number`]).
    pub category: Option<u32>,
    /// Per item of `row.similar`, its number if it is listed too.
    pub similar: Vec<Option<u32>>,
    /// Its number in the snapshot's latent-factor model, if the model has it.
    pub latent: Option<u32>,
}

/// The listed rows: numbered, with the popular lists and similar lists in numbers.
#[derive(Debug, Default)]
pub(super) struct Listed {
    pub(super) items: Vec<ListedItem>,
    pub(super) index: HashMap<String, u32, foldhash::fast::RandomState>,
    pub(super) categories: HashMap<String, u32, foldhash::fast::RandomState>,
    /// Per item of the pool's popular list, its number if it has a row.
    pub(super) popular: Vec<Option<u32>>,
    /// Likewise per category list.
    pub(super) by_category: HashMap<String, Vec<Option<u32>>, foldhash::fast::RandomState>,
}

impl Listed {
    /// Numbers `rows` (those of `pool`'s lists' items and of items similar to them),
    /// resolves the lists and computes each row's terms of `ranker`.
    pub(super) fn new(
        rows: Vec<(String, ItemRow)>,
        pool: &ItemPool,
        ranker: Option<&LinearModel>,
        latent: Option<&Latent>,
    ) -> Listed {
        let mut l = Listed::default();
        for (k, (id, _)) in rows.iter().enumerate() {
            l.index.insert(id.clone(), k as u32);
        }
        for (number, (id, row)) in (0..).zip(rows) {
            let category = row.stats.category.as_ref().map(|(c, _)| {
                let next = l.categories.len() as u32;
                *l.categories.entry(c.clone()).or_insert(next)
            });
            let similar = row
                .similar
                .iter()
                .map(|(s, _)| l.index.get(s).copied())
                .collect();
            let side = ItemSide::of(&row.stats);
            l.items.push(ListedItem {
                number,
                terms: ranker.map_or_else(ItemTerms::default, |r| ItemTerms::of(&side, r)),
                side,
                category,
                similar,
                latent: latent.and_then(|m| m.index(&id)),
                id,
                row,
            });
        }
        let numbers = |list: &[String]| list.iter().map(|i| l.index.get(i).copied()).collect();
        let popular = numbers(&pool.popular);
        let by_category = pool
            .by_category
            .iter()
            .map(|(c, list)| (c.clone(), numbers(list)))
            .collect();
        l.popular = popular;
        l.by_category = by_category;
        l
    }
}

/// An item row: one of the snapshot's listed rows, or one shared from the cache.
#[derive(Debug)]
pub enum ItemRef<'a> {
    /// Loaded with the snapshot.
    Listed(&'a ListedItem),
    /// From the bounded cache (or the store).
    Cached(Arc<ItemRow>),
}

impl Deref for ItemRef<'_> {
    type Target = ItemRow;

    fn deref(&self) -> &ItemRow {
        match self {
            ItemRef::Listed(l) => &l.row,
            ItemRef::Cached(r) => r,
        }
    }
}
