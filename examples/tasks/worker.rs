//! The handler every worker runs: its [`Front`] always, and on worker 0
//! the [`Brain`]. Messages for the brain go to it directly on worker 0,
//! over the bus from the others.

use crate::app;
use crate::brain::Brain;
use crate::config::TasksConfig;
use crate::front::Front;
use crate::link::{Msg, BRAIN};
use bytes::Bytes;
use foreman::{CloseFrame, ConnId, Ctx, Handler, Message, Request, Response, TimerId};
use std::sync::Arc;
use std::time::Duration;

/// How often the brain looks at due times, vanished executors and the page.
const TICK: Duration = Duration::from_millis(10);

/// The page, with its WebSocket path written in.
const PAGE: &str = include_str!("page.html");

/// See the module docs.
pub struct TasksWorker {
    config: Arc<TasksConfig>,
    front: Front,
    brain: Option<Brain>,
    page: Bytes,
}

impl TasksWorker {
    /// The handler of one worker.
    pub fn new(config: Arc<TasksConfig>) -> TasksWorker {
        let path = config
            .server
            .websocket_path
            .clone()
            .unwrap_or_else(|| "/live".into());
        TasksWorker {
            page: app::page(PAGE, &path),
            front: Front::new(config.clone()),
            config,
            brain: None,
        }
    }

    /// Hands `msg` to the brain: here, or over the bus.
    fn forward(&mut self, ctx: &mut Ctx, msg: Option<Msg>) {
        let Some(msg) = msg else {
            return;
        };
        if ctx.worker_id() != BRAIN {
            ctx.send_to_worker(BRAIN, msg.encode());
            return;
        }
        if let Some(brain) = self.brain.as_mut() {
            brain.handle(ctx, &mut self.front, BRAIN, msg);
        }
    }
}

impl Handler for TasksWorker {
    fn on_worker_start(&mut self, ctx: &mut Ctx) {
        if ctx.worker_id() != BRAIN {
            return;
        }
        match Brain::start(ctx, &mut self.front, self.config.clone()) {
            Ok(brain) => self.brain = Some(brain),
            Err(e) => {
                log::error!("brain: cannot open the store: {e}");
                std::process::exit(1);
            }
        }
        ctx.add_timer(TICK, true);
    }

    fn on_connect(&mut self, ctx: &mut Ctx, conn: ConnId) {
        let msg = self.front.open(ctx, conn);
        self.forward(ctx, msg);
    }

    fn on_message(&mut self, ctx: &mut Ctx, conn: ConnId, msg: Message) {
        let msg = self.front.message(ctx, conn, &msg);
        self.forward(ctx, msg);
    }

    fn on_close(&mut self, ctx: &mut Ctx, conn: ConnId, _close: Option<&CloseFrame>) {
        let msg = self.front.close(conn);
        self.forward(ctx, msg);
    }

    fn on_worker_message(&mut self, ctx: &mut Ctx, from: usize, data: Bytes) {
        let Some(msg) = Msg::decode(&data) else {
            log::error!("a message from worker {from} this build cannot read; dropped");
            return;
        };
        match msg {
            Msg::Up => {
                let here = self.front.here();
                ctx.send_to_worker(BRAIN, here.encode());
            }
            Msg::Reply { seq, frame } => self.front.reply(ctx, seq, frame),
            Msg::Lost { marker } => self.front.lost(ctx, marker),
            other => {
                if let Some(brain) = self.brain.as_mut() {
                    brain.handle(ctx, &mut self.front, from, other);
                }
            }
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx, _timer: TimerId) {
        if let Some(brain) = self.brain.as_mut() {
            brain.tick(ctx, &mut self.front);
        }
    }

    fn on_wake(&mut self, ctx: &mut Ctx) {
        if let Some(brain) = self.brain.as_mut() {
            brain.on_wake(ctx, &mut self.front);
        }
    }

    /// Only the page's listener (`http_listen`, a `websocket://` one)
    /// speaks HTTP: the protocol's is `frame://`.
    fn on_http_request(&mut self, _ctx: &mut Ctx, request: &Request) -> Response {
        match (request.method.as_str(), request.path.as_str()) {
            ("GET" | "HEAD", "/" | "/index.html") => {
                Response::html(self.page.clone()).header("Cache-Control", "no-cache")
            }
            ("GET" | "HEAD", "/healthz") => Response::text("ok"),
            (_, "/" | "/index.html" | "/healthz") => Response::status(405).header("Allow", "GET"),
            _ => Response::not_found(),
        }
    }

    fn busy(&mut self, _ctx: &mut Ctx) -> bool {
        self.brain.as_ref().is_some_and(Brain::busy)
    }
}
