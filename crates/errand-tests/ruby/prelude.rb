# Loaded before every Ruby snippet of the interop tests: Sidekiq's client and API against the
# test's own Redis (REDIS_URL), with Ruby's deprecation chatter silenced.
$VERBOSE = nil
require "json"
require "sidekiq"
require "sidekiq/api"
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)
Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch("REDIS_URL") } }
Sidekiq.logger.level = Logger::WARN
