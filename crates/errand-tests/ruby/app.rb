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
