//! Embedding the actors in an actix-web app of your own, with no replicate HTTP front.
//!
//! The app exposes two routes of its own design (`POST /notes/{id}` appends text to a note,
//! `GET /notes/{id}` reads it back through recovery) and keeps every edit as a Yjs update in
//! replicate's durable log. Run it with `cargo run -p replicate-actors --example embedded`: it
//! serves on 127.0.0.1:0, calls itself once, checks the answer and exits.

use actix_web::{web, App, HttpResponse, HttpServer};
use replicate_actors::{Config, Replicate, Write};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Text, Transact, Update};

const COLLECTION: &str = "notes";

/// Appends `text` to note `id`: build a Yjs update on a scratch doc and store it.
async fn append(
    replicate: web::Data<Replicate>,
    id: web::Path<String>,
    text: String,
) -> HttpResponse {
    let doc = Doc::new();
    let notes = doc.get_or_insert_text("body");
    let update = {
        let mut txn = doc.transact_mut();
        notes.insert(&mut txn, 0, &text);
        txn.encode_update_v1()
    };
    let write = Write {
        document_id: id.into_inner(),
        bytes: update,
        op_id: None,
    };
    match replicate.update(COLLECTION, write).await {
        Ok(written) => HttpResponse::Ok().body(format!("seq {}", written.seq)),
        Err(e) => HttpResponse::BadRequest().body(e.to_string()),
    }
}

/// Reads note `id`: recover its whole state (empty state vector) and render the text.
async fn read(replicate: web::Data<Replicate>, id: web::Path<String>) -> HttpResponse {
    let empty_state_vector = [0u8];
    match replicate
        .recovery(COLLECTION, &empty_state_vector, Some(&id))
        .await
    {
        Ok(state) => {
            let doc = Doc::new();
            let body = doc.get_or_insert_text("body");
            let applied =
                Update::decode_v1(&state.update).map(|u| doc.transact_mut().apply_update(u));
            if !matches!(applied, Ok(Ok(()))) {
                return HttpResponse::InternalServerError().finish();
            }
            let text = body.get_string(&doc.transact());
            HttpResponse::Ok().body(text)
        }
        Err(e) => HttpResponse::BadRequest().body(e.to_string()),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let dir = tempfile::tempdir()?;
    // Replicate::open must run inside the actix System (here: #[actix_web::main]).
    let replicate = Replicate::open(Config::new(dir.path())).map_err(std::io::Error::other)?;
    let data = web::Data::new(replicate.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/notes/{id}", web::post().to(append))
            .route("/notes/{id}", web::get().to(read))
    })
    .workers(1)
    .bind("127.0.0.1:0")?;
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    let serving = actix_web::rt::spawn(server);

    // Talk to ourselves over a plain TCP connection, as any HTTP client would (on a blocking
    // thread: the server runs on this one).
    let client =
        actix_web::rt::task::spawn_blocking(move || -> std::io::Result<(String, String)> {
            let post = http(addr, "POST", "/notes/n1", "hello from an embedded app")?;
            let get = http(addr, "GET", "/notes/n1", "")?;
            Ok((post, get))
        });
    let (post, get) = client.await.map_err(std::io::Error::other)??;
    println!("POST -> {post}\nGET  -> {get}");
    handle.stop(true).await;
    let _ = serving.await;
    replicate
        .close(std::time::Duration::from_secs(5))
        .await
        .map_err(std::io::Error::other)?;
    if post.ends_with("seq 1") && get.ends_with("hello from an embedded app") {
        println!("embedded example: ok");
        Ok(())
    } else {
        Err(std::io::Error::other(
            "embedded example answered something unexpected",
        ))
    }
}

/// A minimal blocking HTTP/1.1 request (keeps the example free of an HTTP client dependency).
fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<String> {
    use std::io::{Read, Write as _};
    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.trim_end().to_string())
}
