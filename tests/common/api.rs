//! A client of the server API over real HTTP (reqwest), with the test key.

use reqwest::Method;
use serde_json::Value;

use super::TestServer;

/// The key test servers started with [`API_SETTINGS`] accept.
pub(crate) const API_KEY: &str = "test-api-key-0123456789abcdef-0123456789";

/// Settings that turn the server API on with [`API_KEY`].
pub(crate) const API_SETTINGS: [(&str, &str); 1] = [("API_KEYS", API_KEY)];

/// An answer: status, headers, and the body as JSON (`Null` when empty or not JSON).
pub(crate) struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

pub(crate) struct ApiClient {
    base: String,
    http: reqwest::Client,
    credential: Option<String>,
}

impl ApiClient {
    /// A client of `server`'s API with the test key.
    pub(crate) fn of(server: &TestServer) -> ApiClient {
        let addr = server.running.api_addr().expect("the API is on");
        ApiClient {
            base: format!("http://{addr}/api/v1"),
            http: reqwest::Client::new(),
            credential: Some(API_KEY.to_owned()),
        }
    }

    /// The same API with another bearer credential (or none).
    pub(crate) fn with_credential(&self, credential: Option<&str>) -> ApiClient {
        ApiClient {
            base: self.base.clone(),
            http: self.http.clone(),
            credential: credential.map(str::to_owned),
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, &[], None).await
    }

    /// Every room `GET /rooms` lists, a page of one at a time, following `next` to the end.
    pub(crate) async fn every_room(&self) -> Vec<Value> {
        let mut rooms = Vec::new();
        let mut path = "/rooms?limit=1".to_owned();
        loop {
            let page = self.get(&path).await;
            assert_eq!(page.status, 200, "{}", page.json);
            rooms.extend(page.json["rooms"].as_array().unwrap().iter().cloned());
            match page.json["next"].as_str() {
                Some(next) => path = format!("/rooms?limit=1&cursor={next}"),
                None => return rooms,
            }
        }
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(Method::POST, path, &[], Some(body.to_string()))
            .await
    }

    pub(crate) async fn delete(&self, path: &str) -> Answer {
        self.send(Method::DELETE, path, &[], None).await
    }

    /// Any request: JSON body text (with `Content-Type: application/json`) and extra headers.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(credential) = &self.credential {
            request = request.header("authorization", format!("Bearer {credential}"));
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        Answer {
            status,
            headers,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }
}
