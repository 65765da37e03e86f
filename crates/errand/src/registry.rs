//! The server's table from class name to job code.

use crate::job::args_error;
use crate::{Job, JobContext, JobError, JobOptions, JobResult, decode_args};
use errand_core::Payload;
use futures::future::BoxFuture;
use serde_json::Value;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// Type-erased job code, registered under the job's name.
pub(crate) trait Handler: Send + Sync {
    fn perform<'a>(&'a self, args: &'a [Value], cx: &'a JobContext) -> BoxFuture<'a, JobResult>;
    fn options(&self) -> &JobOptions;
    fn retry_in(&self, count: u32, error: &JobError) -> Option<Duration>;
    fn retries_exhausted(&self, payload: &Payload, error: &JobError);
}

struct Typed<J> {
    options: JobOptions,
    _job: PhantomData<fn() -> J>,
}

impl<J: Job> Handler for Typed<J> {
    fn perform<'a>(&'a self, args: &'a [Value], cx: &'a JobContext) -> BoxFuture<'a, JobResult> {
        Box::pin(async move {
            let job: J = decode_args(args).map_err(|e| args_error(J::NAME, &e))?;
            job.perform(cx).await
        })
    }

    fn options(&self) -> &JobOptions {
        &self.options
    }

    fn retry_in(&self, count: u32, error: &JobError) -> Option<Duration> {
        J::retry_in(count, error)
    }

    fn retries_exhausted(&self, payload: &Payload, error: &JobError) {
        J::retries_exhausted(payload, error)
    }
}

/// Class name → handler.
#[derive(Default, Clone)]
pub(crate) struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl Registry {
    pub(crate) fn register<J: Job>(&mut self) {
        self.handlers.insert(
            J::NAME.to_string(),
            Arc::new(Typed::<J> {
                options: J::options(),
                _job: PhantomData,
            }),
        );
    }

    pub(crate) fn get(&self, class: &str) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(class)
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }
}
