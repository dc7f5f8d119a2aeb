//! What this node knows of its rooms, for the server API: which rooms it has and how full they
//! are, who is in one, and a page of one's history. With Redis the API asks Redis first (it
//! knows every node's rooms); these answer for one node on its own.

use std::sync::Arc;

use super::Hub;
use crate::broker::RoomCount;
use crate::clock;
use crate::history::{Entry, Position};

/// A user in a room: id and display name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Listed {
    pub user_id: String,
    pub username: String,
}

/// A page of `sorted` items: at most `limit` of those whose key comes after `after`, and the
/// key to continue after when there are more.
pub(crate) fn page_after<T>(
    sorted: impl IntoIterator<Item = T>,
    after: Option<&str>,
    limit: usize,
    key: impl Fn(&T) -> &str,
) -> (Vec<T>, Option<String>) {
    let mut page: Vec<T> = sorted
        .into_iter()
        .filter(|item| after.is_none_or(|after| key(item) > after))
        .take(limit + 1)
        .collect();
    let more = page.len() > limit;
    page.truncate(limit);
    let next = more
        .then(|| page.last().map(|last| key(last).to_owned()))
        .flatten();
    (page, next)
}

impl Hub {
    /// Rooms with members, sorted by name, after `after` (exclusive): at most `limit`, and
    /// the name to continue after if there may be more.
    pub(crate) fn rooms_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<RoomCount>, Option<String>) {
        let mut rooms: Vec<RoomCount> = self
            .rooms
            .iter()
            .filter(|room| room.total() > 0)
            .map(|room| RoomCount {
                room: room.key().clone(),
                members: room.total(),
            })
            .collect();
        rooms.sort_unstable_by(|a, b| a.room.cmp(&b.room));
        page_after(rooms, after, limit, |room| &room.room)
    }

    /// The room's members on every node, one per user, sorted by user id; `None` if it has
    /// none.
    pub(crate) fn listed(&self, room: &str) -> Option<Vec<Listed>> {
        let entry = self.rooms.get(room)?;
        let users: Vec<Listed> = entry
            .users()
            .into_iter()
            .map(|(user_id, username)| Listed {
                user_id: user_id.to_owned(),
                username: username.to_owned(),
            })
            .collect();
        (!users.is_empty()).then_some(users)
    }

    /// The room's position and at most `limit` messages after `after`, oldest first; `None`
    /// if this node holds none of the room's history.
    pub(crate) fn history_after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Option<(Position, Vec<Arc<Entry>>)> {
        self.history.page(room, after, limit, clock::unix_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::page_after;

    fn page(after: Option<&str>) -> (Vec<String>, Option<String>) {
        let names = ["aa", "bb", "cc", "dd", "ee"].map(String::from);
        page_after(names, after, 2, String::as_str)
    }

    #[test]
    fn pages_continue_after_their_last_key_and_end_without_one() {
        let next = |key: &str| Some(key.to_owned());
        assert_eq!(page(None), (vec!["aa".into(), "bb".into()], next("bb")));
        assert_eq!(
            page(Some("bb")),
            (vec!["cc".into(), "dd".into()], next("dd"))
        );
        assert_eq!(page(Some("dd")), (vec!["ee".into()], None));
        assert_eq!(page(Some("cc")), (vec!["dd".into(), "ee".into()], None));
        assert_eq!(page(Some("zz")), (vec![], None));
    }
}
