//! The service under test: started in-process (the real HTTP front on a temporary sled
//! directory, port 0, in its own thread; with authentication on unless asked otherwise, and
//! a token minted for the run) or reached at `--target URL[,URL…]`.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use replicate_actors::Config;

use crate::auth::Credentials;
use crate::backend::Http;
use crate::targets::Targets;

/// The servers a run talks to; stops the in-process one when dropped.
pub struct Server {
    /// The in-process server's URL, or every `--target`.
    pub targets: Targets,
    /// The token minted for an in-process server with authentication on.
    pub credentials: Option<Credentials>,
    running: Option<replicate::RunningServer>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts the service in-process with `config` (its data dir is replaced by a temporary
    /// one). With `auth`, the server verifies HS256 tokens with a random secret and
    /// [`Self::credentials`] holds an admin token for it; without, it is anonymous.
    ///
    /// # Errors
    /// If the directory or the server cannot be set up.
    pub fn in_process(mut config: Config, auth: bool) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        config.data_dir = dir.path().join("data");
        let mut settings = replicate::ServerSettings::default();
        let credentials = if auth {
            // As text: the server trims a trailing newline from the secret file, so random
            // bytes ending in `\n` (1 run in 256) made a key that refused every token.
            let random: [u8; 32] = rand::random();
            let secret: Vec<u8> = random
                .iter()
                .flat_map(|b| format!("{b:02x}").into_bytes())
                .collect();
            let file = dir.path().join("secret");
            std::fs::write(&file, &secret)?;
            settings.auth.keys.secret_file = Some(file);
            Some(Credentials::mint(&secret)?)
        } else {
            None
        };
        let running = replicate::spawn_in_thread(config, settings)?;
        Ok(Server {
            credentials,
            targets: Targets::one(&running.base_url()),
            running: Some(running),
            _dir: Some(dir),
        })
    }

    /// The in-process server's own actors (none for `--target`s).
    pub fn service_actors(&self) -> Option<replicate_actors::Replicate> {
        self.running
            .as_ref()
            .map(replicate::RunningServer::replicate)
    }

    /// Servers someone else runs.
    pub fn remote(targets: Targets) -> Server {
        Server {
            credentials: None,
            targets,
            running: None,
            _dir: None,
        }
    }

    /// Waits until `GET /healthz` answers 200 on every target (`http` is a client over
    /// [`Self::targets`]).
    ///
    /// # Errors
    /// If one does not within `within`.
    pub async fn wait_healthy(&self, http: &Http, within: Duration) -> Result<()> {
        let until = Instant::now() + within;
        for (i, url) in self.targets.iter().enumerate() {
            let http = http.for_peer(i as u64);
            while !http.healthy().await {
                if Instant::now() >= until {
                    bail!("{url} did not become healthy within {within:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop();
        }
    }
}
