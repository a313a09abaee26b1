//! `raftkv-ceiling`: the benchmark's ceiling. One actix-web process that
//! serves the same `PUT/GET /kv/{key}` JSON API from an in-memory map, with
//! no replication and no fsync, so `make bench` can show how much of the
//! machine consensus and durability cost. Not a product; never use it to
//! store anything.

use std::collections::HashMap;
use std::sync::RwLock;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18100")]
    listen: String,
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

struct Store {
    map: RwLock<HashMap<String, (String, u64)>>,
    revision: std::sync::atomic::AtomicU64,
}

fn key(req: &HttpRequest) -> String {
    req.uri().path().trim_start_matches("/kv/").to_string()
}

async fn put(req: HttpRequest, body: web::Bytes, store: web::Data<Store>) -> HttpResponse {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return HttpResponse::BadRequest().json(json!({"error": "invalid JSON", "code": "invalid_json"}));
    };
    let Some(value) = v["value"].as_str() else {
        return HttpResponse::BadRequest().json(json!({"error": "missing value", "code": "missing_field"}));
    };
    let k = key(&req);
    let rev = store.revision.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    store.map.write().unwrap().insert(k.clone(), (value.to_string(), rev));
    HttpResponse::Ok().json(json!({"key": k, "revision": rev}))
}

async fn get(req: HttpRequest, store: web::Data<Store>) -> HttpResponse {
    let k = key(&req);
    match store.map.read().unwrap().get(&k) {
        Some((v, rev)) => HttpResponse::Ok().json(json!({"key": k, "value": v, "revision": rev})),
        None => HttpResponse::NotFound().json(json!({"error": "not found", "code": "not_found", "key": k})),
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let store = web::Data::new(Store { map: RwLock::new(HashMap::new()), revision: 0.into() });
    actix_web::rt::System::new().block_on(
        HttpServer::new(move || {
            App::new()
                .app_data(store.clone())
                .route("/kv/{key:.*}", web::put().to(put))
                .route("/kv/{key:.*}", web::get().to(get))
                .route("/health", web::get().to(HttpResponse::Ok))
        })
        .workers(args.workers)
        .bind(&args.listen)?
        .run(),
    )
}
