//! The model runs on one thread; requests reach it through a bounded queue.
//! One image at a time, so an answer never depends on what else was queued
//! with it (a batch of several can round differently on a GPU).

use crate::infer;
use rr_core::data::DatasetInfo;
use rr_core::model::Model;
use rr_core::Backend;
use tokio::sync::{mpsc, oneshot};

/// One prepared image and where its class probabilities go.
pub struct Job {
    pixels: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<f32>, String>>,
}

/// The sending side, shared by the request handlers.
#[derive(Clone)]
pub struct Queue(mpsc::Sender<Job>);

/// A queue holding up to `capacity` images.
pub fn queue(capacity: usize) -> (Queue, mpsc::Receiver<Job>) {
    let (tx, rx) = mpsc::channel(capacity);
    (Queue(tx), rx)
}

impl Queue {
    /// The class probabilities of one image, once the model has come to it.
    pub async fn probabilities(&self, pixels: Vec<u8>) -> Result<Vec<f32>, String> {
        let (reply, answer) = oneshot::channel();
        self.0.send(Job { pixels, reply }).await.map_err(|_| "the server is shutting down".to_string())?;
        answer.await.map_err(|_| "the model stopped before answering".to_string())?
    }
}

/// Runs queued images through the model until every sender is gone.
pub fn run_worker<B: Backend>(backend: &B, model: &mut Model<B>, dataset: &DatasetInfo, mut jobs: mpsc::Receiver<Job>) {
    while let Some(job) = jobs.blocking_recv() {
        if job.reply.is_closed() {
            continue; // the client went away while its image waited
        }
        let result =
            infer::probabilities(backend, model, dataset, &[job.pixels]).map(|mut probs| probs.remove(0)).map_err(|e| format!("{e:#}"));
        let _ = job.reply.send(result);
    }
}
