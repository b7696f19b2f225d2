//! TEMPORARY: a minimal HTTP front speaking the wire contract, used only until
//! `replicate::spawn_in_thread` exists. Delete once the real front lands.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use replicate_actors::{CompactRequest, Config, OperationType, Replicate, StreamRequest, Write};
use serde::Deserialize;
use serde_json::{json, Value};

pub struct RunningServer {
    pub addr: SocketAddr,
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl RunningServer {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn err(e: replicate_actors::Error) -> HttpResponse {
    let status = match e {
        replicate_actors::Error::Overloaded { .. } => actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
        replicate_actors::Error::Storage(_) | replicate_actors::Error::Internal(_) => actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
        _ => actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
    };
    HttpResponse::build(status).json(json!({"error": {"code": "error", "message": e.to_string()}}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WriteBody {
    document_id: String,
    crdt_bytes: String,
    op_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamQ {
    cursor: Option<u64>,
    limit: Option<usize>,
    wait_ms: Option<u64>,
}

fn change_json(c: &replicate_actors::Change) -> Value {
    json!({"documentId": c.document_id, "seq": c.seq, "crdtBytes": B64.encode(&c.bytes), "operationType": c.operation.as_str()})
}

async fn write(r: web::Data<Replicate>, path: web::Path<(String, String)>, body: web::Json<WriteBody>) -> HttpResponse {
    let (c, op) = path.into_inner();
    let op = match op.as_str() {
        "insert" => OperationType::Insert,
        "update" => OperationType::Update,
        _ => OperationType::Delete,
    };
    let Ok(bytes) = B64.decode(&body.crdt_bytes) else { return HttpResponse::BadRequest().json(json!({"error":{"code":"b64","message":"base64"}})) };
    let w = Write { document_id: body.document_id.clone(), bytes, op_id: body.op_id.clone() };
    match r.write(&c, op, w).await {
        Ok(w) => HttpResponse::Ok().json(json!({"success": true, "seq": w.seq})),
        Err(e) => err(e),
    }
}

async fn stream(r: web::Data<Replicate>, c: web::Path<String>, q: web::Query<StreamQ>) -> HttpResponse {
    let req = StreamRequest {
        cursor: q.cursor.unwrap_or(0),
        limit: q.limit.unwrap_or(100),
        size_threshold: None,
        wait: Duration::from_millis(q.wait_ms.unwrap_or(0)),
    };
    match r.stream(&c, req).await {
        Ok(p) => HttpResponse::Ok().json(json!({
            "changes": p.changes.iter().map(change_json).collect::<Vec<_>>(),
            "cursor": p.cursor, "hasMore": p.has_more, "compact": p.compact,
        })),
        Err(e) => err(e),
    }
}

async fn events(r: web::Data<Replicate>, c: web::Path<String>, q: web::Query<StreamQ>) -> HttpResponse {
    let c = c.into_inner();
    let r = r.get_ref().clone();
    let cursor = q.cursor.unwrap_or(0);
    let s = futures::stream::unfold((r, c, cursor), |(r, c, cursor)| async move {
        let req = StreamRequest { cursor, limit: 1000, size_threshold: None, wait: Duration::from_secs(15) };
        match r.stream(&c, req).await {
            Ok(p) => {
                let mut out = String::new();
                for ch in &p.changes {
                    out.push_str(&format!("id: {}\ndata: {}\n\n", ch.seq, change_json(ch)));
                }
                if out.is_empty() {
                    out.push_str(": keep-alive\n\n");
                }
                Some((Ok::<_, actix_web::Error>(web::Bytes::from(out)), (r, c, p.cursor)))
            }
            Err(_) => None,
        }
    });
    HttpResponse::Ok().content_type("text/event-stream").streaming(s)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AckBody {
    peer_id: String,
    synced_seq: u64,
}

async fn ack(r: web::Data<Replicate>, c: web::Path<String>, b: web::Json<AckBody>) -> HttpResponse {
    match r.ack(&c, &b.peer_id, b.synced_seq).await {
        Ok(s) => HttpResponse::Ok().json(json!({"lastSyncedSeq": s})),
        Err(e) => err(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompactBody {
    document_id: String,
    peer_timeout: Option<u64>,
}

async fn compact(r: web::Data<Replicate>, c: web::Path<String>, b: web::Json<CompactBody>) -> HttpResponse {
    let req = CompactRequest { peer_timeout: b.peer_timeout.map(Duration::from_millis), ..CompactRequest::document(b.document_id.clone()) };
    match r.compact(&c, req).await {
        Ok(d) => HttpResponse::Ok().json(json!({"success": true, "removed": d.removed, "retained": d.retained, "snapshotSeq": d.snapshot_seq})),
        Err(e) => err(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecoveryBody {
    state_vector: String,
    document_id: Option<String>,
}

async fn recovery(r: web::Data<Replicate>, c: web::Path<String>, b: web::Json<RecoveryBody>) -> HttpResponse {
    let Ok(sv) = B64.decode(&b.state_vector) else { return HttpResponse::BadRequest().finish() };
    match r.recovery(&c, &sv, b.document_id.as_deref()).await {
        Ok(s) => HttpResponse::Ok().json(json!({"diff": B64.encode(&s.update), "cursor": s.cursor})),
        Err(e) => err(e),
    }
}

pub fn spawn_in_thread(config: Config, _settings: ()) -> std::io::Result<RunningServer> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let sys = actix_rt::System::new();
        sys.block_on(async move {
            let r = Replicate::open(config).expect("open");
            let data = web::Data::new(r);
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .app_data(web::JsonConfig::default().limit(64 << 20))
                    .route("/healthz", web::get().to(HttpResponse::Ok))
                    .route("/v1/{c}/stream", web::get().to(stream))
                    .route("/v1/{c}/events", web::get().to(events))
                    .route("/v1/{c}/ack", web::post().to(ack))
                    .route("/v1/{c}/compact", web::post().to(compact))
                    .route("/v1/{c}/recovery", web::post().to(recovery))
                    .route("/v1/{c}/{op}", web::post().to(write))
            })
            .workers(2)
            .disable_signals()
            .bind("127.0.0.1:0")
            .expect("bind");
            let addr = server.addrs()[0];
            let running = server.run();
            let handle = running.handle();
            tx.send(addr).expect("send");
            actix_rt::spawn(async move {
                while stop_rx.try_recv().is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                handle.stop(false).await;
            });
            let _ = running.await;
        });
    });
    let addr = rx.recv().map_err(|_| std::io::Error::other("server did not start"))?;
    Ok(RunningServer { addr, stop: Some(stop_tx) })
}
