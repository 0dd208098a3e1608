//! The admin API (`/api/v1/...`, JSON, bearer token; described by `docs/openapi.yaml`).
//!
//! Statistics come from the workers' blocks and the history, without asking any worker.
//! Everything else is a control request ([`crate::runtime::ops_link`]): sent to the worker(s)
//! that hold the answer, whose replies the HTTP thread waits for (never the other way round),
//! at most [`REPLY_TIMEOUT`] (then 504). A full control queue is a 503.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use super::http::{Request, Response};
use super::metrics::{self, History};
use super::token::Token;
use crate::broker::admin::{AdminAnswer, AdminClient, AdminQuery};
use crate::broker::{home_worker, Millis, WorkerId};
use crate::protocol::{TopicFilter, TopicName};
use crate::runtime::export::Metric;
use crate::runtime::ops_link::{OpsLink, ReplySlot};

/// How long the HTTP thread waits for the workers' answers.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often it looks whether they came.
const REPLY_POLL: Duration = Duration::from_millis(1);

/// What the admin handlers work with.
#[derive(Debug)]
pub struct Admin {
    pub link: OpsLink,
    pub token: Token,
    pub history: Arc<Mutex<History>>,
    pub list_max: usize,
}

fn json_response(status: u16, value: &Value) -> Response {
    Response::new(status, "application/json", value.to_string())
}

fn error(status: u16, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

impl Admin {
    /// Answers one `/api/...` request.
    pub fn handle(&mut self, request: &Request) -> Response {
        self.token.reload_if_changed();
        if let Err(response) = self.token.check(request.header("authorization")) {
            return response;
        }
        let path = request.path.trim_end_matches('/');
        let method = request.method.as_str();
        let result = match (method, path) {
            ("GET", "/api/v1/stats") => Ok(self.stats()),
            ("GET", "/api/v1/stats/history") => Ok(self.history()),
            ("GET", "/api/v1/clients") => self.clients(request),
            ("GET", "/api/v1/subscriptions") => self.subscriptions(request),
            ("GET", "/api/v1/retained") => self.retained(request),
            ("DELETE", "/api/v1/retained") => self.delete_retained(request),
            ("POST", _) if path.starts_with("/api/v1/clients/") && path.ends_with("/kick") => {
                let client_id = &path["/api/v1/clients/".len()..path.len() - "/kick".len()];
                self.kick(client_id)
            }
            _ => Err(error(404, "no such endpoint (see docs/openapi.yaml)")),
        };
        result.unwrap_or_else(|response| response)
    }

    fn limit(&self, request: &Request) -> Result<usize, Response> {
        match request.param("limit") {
            None => Ok(self.list_max),
            Some(text) => match text.parse::<usize>() {
                Ok(limit) => Ok(limit.min(self.list_max)),
                Err(_) => Err(error(400, "limit must be a non-negative integer")),
            },
        }
    }

    fn stats(&self) -> Response {
        let values = metrics::read_all(&self.link);
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let workers: Vec<Value> = values
            .iter()
            .enumerate()
            .map(|(index, worker)| {
                json!({
                    "worker": index,
                    "connections": worker[Metric::Connections as usize],
                    "connection_slots": worker[Metric::SlabSlots as usize],
                    "clients_connected": worker[Metric::ClientsConnected as usize],
                    "sessions": worker[Metric::Sessions as usize],
                    "loop_turns": worker[Metric::Turns as usize],
                    "loop_busy_nanos": worker[Metric::BusyNanos as usize],
                    "loop_turn_max_nanos": worker[Metric::TurnMaxNanos as usize],
                })
            })
            .collect();
        let totals = metrics::Sample::take(&values, metrics::resident_bytes());
        json_response(
            200,
            &json!({
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_seconds": self.link.epoch.elapsed().as_secs_f64(),
                "connects_per_second": history.connects_per_second(),
                "retained_messages": metrics::largest(&values, Metric::Retained),
                "inflight_messages": metrics::total(&values, Metric::Inflight),
                "queued_messages": metrics::total(&values, Metric::Queued),
                "totals": totals,
                "workers": workers,
            }),
        )
    }

    fn history(&self) -> Response {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let samples: Vec<&metrics::Sample> = history.samples().collect();
        json_response(200, &json!({ "interval_seconds": 1, "samples": samples }))
    }

    fn clients(&mut self, request: &Request) -> Result<Response, Response> {
        let search = request.param("search").unwrap_or("").to_owned();
        let limit = self.limit(request)?;
        let answers = self.ask_all(&AdminQuery::Clients { search, limit })?;
        let mut items = Vec::new();
        let mut matched = 0;
        for (worker, answer) in answers.into_iter().enumerate() {
            let AdminAnswer::Clients { items: clients, matched: count } = answer else {
                return Err(error(500, "a worker gave the wrong kind of answer"));
            };
            matched += count;
            items.extend(clients.into_iter().map(|client| self.client_json(worker, client)));
        }
        items.sort_by(|a, b| a["client_id"].as_str().cmp(&b["client_id"].as_str()));
        items.truncate(limit);
        Ok(json_response(200, &json!({ "matched": matched, "clients": items })))
    }

    fn client_json(&self, worker: usize, client: AdminClient) -> Value {
        json!({
            "client_id": client.client_id,
            "connected": client.conn.is_some(),
            "address": client.address.map(|address| address.to_string()),
            "worker": worker,
            "persistent": client.persistent,
            "connected_since_unix_millis": client.connected_since.map(|at| self.unix_millis(at)),
            "keepalive_secs": client.keepalive_secs,
            "inflight": client.inflight,
            "queued": client.queued,
            "subscriptions": client.subscriptions,
        })
    }

    fn unix_millis(&self, at: Millis) -> u64 {
        let wall = self.link.epoch_wall + Duration::from_millis(at.0);
        wall.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    fn subscriptions(&mut self, request: &Request) -> Result<Response, Response> {
        let search = request.param("search").unwrap_or("").to_owned();
        let limit = self.limit(request)?;
        let answers = self.ask_all(&AdminQuery::Subscriptions { search, limit })?;
        let mut items = Vec::new();
        let mut matched = 0;
        for (worker, answer) in answers.into_iter().enumerate() {
            let AdminAnswer::Subscriptions { items: subscriptions, matched: count } = answer else {
                return Err(error(500, "a worker gave the wrong kind of answer"));
            };
            matched += count;
            items.extend(subscriptions.into_iter().map(|subscription| {
                json!({
                    "client_id": subscription.client_id,
                    "filter": subscription.filter,
                    "qos": subscription.qos as u8,
                    "worker": worker,
                })
            }));
        }
        items.truncate(limit);
        Ok(json_response(200, &json!({ "matched": matched, "subscriptions": items })))
    }

    fn retained(&mut self, request: &Request) -> Result<Response, Response> {
        let limit = self.limit(request)?;
        let filter_text = request.param("topic").or(request.param("filter")).unwrap_or("#");
        let filter = TopicFilter::try_from(filter_text)
            .map_err(|_| error(400, "topic/filter is not a valid topic filter"))?;
        // Every worker holds a full replica: worker 0's answers.
        let answer = self.ask(0, AdminQuery::Retained { filter, limit })?;
        let AdminAnswer::Retained { items, matched } = answer else {
            return Err(error(500, "a worker gave the wrong kind of answer"));
        };
        let items: Vec<Value> = items
            .into_iter()
            .map(|message| {
                json!({
                    "topic": message.topic,
                    "qos": message.qos as u8,
                    "payload": std::str::from_utf8(&message.payload).ok(),
                    "payload_base64": base64(&message.payload),
                })
            })
            .collect();
        Ok(json_response(200, &json!({ "matched": matched, "retained": items })))
    }

    fn delete_retained(&mut self, request: &Request) -> Result<Response, Response> {
        let Some(topic) = request.param("topic") else {
            return Err(error(400, "topic is required"));
        };
        let topic = TopicName::try_from(topic)
            .map_err(|_| error(400, "topic is not a valid topic name"))?;
        let owner = home_worker(topic.as_bytes(), self.workers());
        match self.ask(owner.index(), AdminQuery::DeleteRetained { topic })? {
            AdminAnswer::Done(true) => Ok(json_response(200, &json!({ "deleted": true }))),
            AdminAnswer::Done(false) => Err(error(404, "no retained message on that topic")),
            _ => Err(error(500, "a worker gave the wrong kind of answer")),
        }
    }

    fn kick(&mut self, client_id: &str) -> Result<Response, Response> {
        let home: WorkerId = home_worker(client_id.as_bytes(), self.workers());
        let query = AdminQuery::Kick { client_id: client_id.to_owned() };
        match self.ask(home.index(), query)? {
            AdminAnswer::Done(true) => Ok(json_response(200, &json!({ "kicked": true }))),
            AdminAnswer::Done(false) => Err(error(404, "no connected client with that id")),
            _ => Err(error(500, "a worker gave the wrong kind of answer")),
        }
    }

    fn workers(&self) -> u16 {
        // The runtime starts at most 128 workers.
        u16::try_from(self.link.control.len()).unwrap_or(u16::MAX)
    }

    fn ask(&mut self, worker: usize, query: AdminQuery) -> Result<AdminAnswer, Response> {
        let slot = self.send(worker, query)?;
        let mut answers = wait(vec![slot])?;
        Ok(answers.remove(0))
    }

    fn ask_all(&mut self, query: &AdminQuery) -> Result<Vec<AdminAnswer>, Response> {
        let slots = (0..self.link.control.len())
            .map(|worker| self.send(worker, query.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        wait(slots)
    }

    fn send(&mut self, worker: usize, query: AdminQuery) -> Result<Arc<ReplySlot>, Response> {
        self.link.control[worker]
            .send(query)
            .ok_or_else(|| error(503, "the worker's control queue is full (admin_queue_depth)"))
    }
}

/// Waits for every slot to be filled, up to [`REPLY_TIMEOUT`].
fn wait(slots: Vec<Arc<ReplySlot>>) -> Result<Vec<AdminAnswer>, Response> {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while slots.iter().any(|slot| slot.get().is_none()) {
        if Instant::now() >= deadline {
            return Err(error(504, "a worker did not answer in time"));
        }
        std::thread::sleep(REPLY_POLL);
    }
    Ok(slots.iter().filter_map(|slot| slot.get().cloned()).collect())
}

/// Standard base64 with padding (RFC 4648), for payloads that are not UTF-8.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = chunk
            .iter()
            .enumerate()
            .fold(0u32, |word, (i, &byte)| word | (u32::from(byte) << (16 - 8 * i)));
        for index in 0..4 {
            if index <= chunk.len() {
                out.push(char::from(ALPHABET[((word >> (18 - 6 * index)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_does_not_answer_is_a_504_after_the_timeout() {
        let started = Instant::now();
        let answered = Arc::new(ReplySlot::new());
        let _ = answered.set(AdminAnswer::Done(true));
        let silent = Arc::new(ReplySlot::new());
        let response = wait(vec![answered, silent]).expect_err("one worker never answers");
        assert_eq!(response.status, 504);
        assert!(started.elapsed() >= REPLY_TIMEOUT);
    }

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }
}
