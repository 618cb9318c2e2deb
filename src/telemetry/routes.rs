//! Route templates (`/users/{id}`): a bounded `http_route` label and span
//! name, whatever paths clients send.

/// A set of templates, matched in the order given.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    templates: Vec<Template>,
}

#[derive(Debug, Clone)]
struct Template {
    text: String,
    /// `None` for a `{param}` segment.
    segments: Vec<Option<String>>,
}

/// A template that is not of the form `/a/{b}/c`.
#[derive(Debug, thiserror::Error)]
#[error("route template {0:?} must start with / and use {{name}} for whole segments")]
pub struct BadTemplate(String);

impl Routes {
    /// Parses a comma-separated list: `/users/{id},/orders/{id}/items`.
    ///
    /// # Errors
    /// A template that does not start with `/` or has a partial `{param}`.
    pub fn parse(list: &str) -> Result<Self, BadTemplate> {
        let mut templates = Vec::new();
        for text in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !text.starts_with('/') {
                return Err(BadTemplate(text.to_owned()));
            }
            let mut segments = Vec::new();
            for segment in text[1..].split('/') {
                if segment.starts_with('{') && segment.ends_with('}') && segment.len() > 2 {
                    segments.push(None);
                } else if segment.contains(['{', '}']) {
                    return Err(BadTemplate(text.to_owned()));
                } else {
                    segments.push(Some(segment.to_owned()));
                }
            }
            templates.push(Template { text: text.to_owned(), segments });
        }
        Ok(Self { templates })
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    pub fn len(&self) -> usize {
        self.templates.len()
    }

    /// The template text of route `index`.
    pub fn template(&self, index: usize) -> &str {
        self.templates.get(index).map_or("", |t| t.text.as_str())
    }

    /// Index of the first template matching `path`. No allocation.
    pub fn find(&self, path: &str) -> Option<usize> {
        let path = path.strip_prefix('/').unwrap_or(path);
        self.templates.iter().position(|t| {
            let mut parts = path.split('/');
            t.segments.iter().all(|s| match (s, parts.next()) {
                (Some(lit), Some(p)) => lit == p,
                (None, Some(p)) => !p.is_empty(),
                (_, None) => false,
            }) && parts.next().is_none()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_whole_segments() {
        let r = Routes::parse("/users/{id}, /orders/{id}/items,/").unwrap();
        assert_eq!(r.find("/users/42"), Some(0));
        assert_eq!(r.find("/users/42/"), None);
        assert_eq!(r.find("/users/"), None);
        assert_eq!(r.find("/orders/7/items"), Some(1));
        assert_eq!(r.find("/orders/7/other"), None);
        assert_eq!(r.find("/"), Some(2));
        assert_eq!(r.template(1), "/orders/{id}/items");
        assert!(Routes::parse("users/{id}").is_err());
        assert!(Routes::parse("/users/{id").is_err());
        assert!(Routes::parse("/a/x{id}").is_err());
    }
}
