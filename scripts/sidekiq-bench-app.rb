# Loaded by the `sidekiq` process that scripts/sidekiq-bench.rb starts: the benchmark's jobs.
$VERBOSE = nil
require "sidekiq"
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)
Sidekiq.configure_server { |c| c.redis = { url: ENV.fetch("REDIS_URL") } }
Sidekiq.logger.level = Logger::WARN

# No work at all.
class NoopJob
  include Sidekiq::Worker
  def perform(*); end
end

# Records its enqueue-to-start latency in milliseconds.
class LatencyJob
  include Sidekiq::Worker
  def perform(_i)
    waited = (Process.clock_gettime(Process::CLOCK_REALTIME) - @enqueued_at.to_f) * 1000.0
    Sidekiq.redis { |r| r.rpush("bench:lat", waited) }
  end
end

# Hands each job its payload's enqueued_at before perform.
class EnqueuedAt
  def call(worker, job, _queue)
    worker.instance_variable_set(:@enqueued_at, job["enqueued_at"])
    yield
  end
end
Sidekiq.configure_server { |c| c.server_middleware { |chain| chain.add EnqueuedAt } }
