# The Ruby Sidekiq side of scripts/bench-vs-sidekiq: the same phases as `errand bench`, run
# against Debian's ruby-sidekiq on the Redis at REDIS_URL, printing one JSON object with the
# same keys. Usage: ruby sidekiq-bench.rb JOBS SINGLE RATE SECONDS CONCURRENCY
$VERBOSE = nil
require "json"
require "sidekiq"
require "sidekiq/api"
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

jobs, single, rate, seconds, concurrency = ARGV.map(&:to_f)
jobs = jobs.to_i
single = single.to_i
url = ENV.fetch("REDIS_URL")
Sidekiq.configure_client { |c| c.redis = { url: url, size: 5 } }
Sidekiq.logger.level = Logger::WARN

# A no-op job, the same work as Errand's ErrandBench::Noop.
class NoopJob
  include Sidekiq::Worker
  def perform(*); end
end

def now = Process.clock_gettime(Process::CLOCK_REALTIME)
def llen = Sidekiq.redis { |r| r.llen("queue:default") }

# What Redis itself has spent: CPU seconds (sys + user) and commands run, from INFO. Read
# around the drain, as `errand bench` does (the bench's own LLEN polls are in it: one per 5 ms).
def redis_cost
  info = Sidekiq.redis { |r| r.call("INFO", "cpu", "commandstats") }
  cpu = info[/used_cpu_sys:([\d.]+)/, 1].to_f + info[/used_cpu_user:([\d.]+)/, 1].to_f
  calls = info.scan(/^cmdstat_[^:]+:calls=(\d+)/).flatten.sum(&:to_i)
  [cpu, calls]
end

def cpu_and_rss(pid)
  stat = File.read("/proc/#{pid}/stat").split(") ").last.split
  ticks = stat[11].to_i + stat[12].to_i
  hwm = File.read("/proc/#{pid}/status")[/VmHWM:\s+(\d+)/, 1].to_i
  [ticks / Etc.sysconf(Etc::SC_CLK_TCK).to_f, hwm / 1024.0]
end
require "etc"

Sidekiq.redis(&:flushdb)

# 1. Bulk enqueue, 10,000 per push_bulk.
t = now
(0...jobs).each_slice(10_000) { |s| Sidekiq::Client.push_bulk("class" => NoopJob, "args" => s.map { |i| [i] }) }
enqueue_s = now - t

# 1b. One at a time.
t = now
single.times { |i| NoopJob.perform_async(jobs + i) }
single_s = now - t
total = jobs + single

# 2. Drain with a real `sidekiq` process (its boot is not timed: the clock starts at its first fetch).
app = File.join(__dir__, "sidekiq-bench-app.rb")
pid = spawn({ "REDIS_URL" => url }, "sidekiq", "-r", app, "-c", concurrency.to_i.to_s, "-q", "default",
            out: File::NULL, err: File::NULL)
sleep 0.005 while llen == total
t = now
cpu0, = cpu_and_rss(pid)
redis0 = redis_cost
sleep 0.005 while llen > 0
drain_s = now - t
cpu1, = cpu_and_rss(pid)
redis1 = redis_cost

# 3. Latency at a steady rate on the idle server: each job records now - enqueued_at.
lat_jobs = (rate * seconds).round
Sidekiq.redis { |r| r.del("bench:lat") }
t = now
lat_jobs.times do |i|
  target = t + i / rate
  delay = target - now
  sleep delay if delay > 0
  Sidekiq::Client.push("class" => "LatencyJob", "args" => [i])
end
deadline = now + 30
sleep 0.01 while Sidekiq.redis { |r| r.llen("bench:lat") } < lat_jobs && now < deadline
lat = Sidekiq.redis { |r| r.lrange("bench:lat", 0, -1) }.map(&:to_f).sort
_, rss = cpu_and_rss(pid)
Process.kill("TERM", pid)
Process.wait(pid)

pct = ->(q) { lat.empty? ? 0 : lat[[(q * lat.size).ceil - 1, 0].max] }
puts JSON.generate(
  "backend" => "redis", "system" => "sidekiq #{Sidekiq::VERSION}", "jobs" => jobs, "concurrency" => concurrency.to_i,
  "enqueue_jobs_per_sec" => jobs / enqueue_s, "single_enqueue_jobs_per_sec" => single / single_s,
  "drain_jobs_per_sec" => total / drain_s, "cpu_s_per_100k" => (cpu1 - cpu0) * 100_000 / total,
  "latency_p50_ms" => pct.(0.5), "latency_p99_ms" => pct.(0.99), "latency_max_ms" => lat.last || 0,
  "latency_jobs" => lat.size, "peak_rss_mb" => rss,
  "redis_cpu_s_per_100k" => (redis1[0] - redis0[0]) * 100_000 / total,
  "redis_commands_per_job" => (redis1[1] - redis0[1]).to_f / total
)
