# The Ruby side of the interop tests, loaded by `sidekiq -r` and by snippets. Jobs record what
# they ran in the Redis list `ruby:ran` so the Rust tests can assert on it.
$VERBOSE = nil
require "json"
require "sidekiq"
require "active_job"
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

Sidekiq.configure_server do |c|
  c.redis = { url: ENV.fetch("REDIS_URL") }
  c.options[:poll_interval_average] = 1 if c.respond_to?(:options)
end
Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch("REDIS_URL") } }
Sidekiq.logger.level = Logger::WARN

def record(entry)
  Sidekiq.redis { |r| r.rpush("ruby:ran", JSON.generate(entry)) }
end

# A plain Sidekiq job that Errand enqueues.
class OkJob
  include Sidekiq::Worker
  def perform(*args)
    record("class" => "OkJob", "args" => args, "jid" => jid)
  end
end

ActiveJob::Base.queue_adapter = :sidekiq
ActiveJob::Base.logger = Logger.new(nil)

# A Rails job that Errand enqueues through ActiveJob's wrapped form.
class RubyAjJob < ActiveJob::Base
  queue_as :default
  def perform(*args)
    record("class" => "RubyAjJob", "args" => args)
  end
end

# A Rails job whose name an Errand job also has: Ruby enqueues, Errand runs it.
class UserWelcomeJob < ActiveJob::Base
  queue_as :default
  def perform(user_id); end
end

# The trace context a job arrived with, read the way Ruby's OpenTelemetry Sidekiq
# instrumentation reads it (`OpenTelemetry.propagation.extract(job)`: the job hash's own
# top-level `traceparent` and `tracestate` keys), parsed by the W3C Trace Context rules.
class TraceContextMiddleware
  TRACEPARENT = /\A(?<version>[0-9a-f]{2})-(?<trace_id>[0-9a-f]{32})-(?<parent_id>[0-9a-f]{16})-(?<flags>[0-9a-f]{2})\z/

  def call(_worker, job, _queue)
    if job["class"] == "TracedRubyJob"
      m = TRACEPARENT.match(job["traceparent"].to_s)
      valid = m && m[:version] != "ff" && m[:trace_id] != "0" * 32 && m[:parent_id] != "0" * 16
      record("class" => "TracedRubyJob", "jid" => job["jid"], "valid" => !!valid,
             "trace_id" => m && m[:trace_id], "parent_id" => m && m[:parent_id],
             "sampled" => m && (m[:flags].to_i(16) & 1) == 1, "tracestate" => job["tracestate"])
    end
    yield
  end
end

Sidekiq.configure_server do |c|
  c.server_middleware { |chain| chain.add TraceContextMiddleware }
end

# A Ruby job Errand pushes with a trace context (recorded by the middleware above).
class TracedRubyJob
  include Sidekiq::Worker
  def perform(*); end
end
