//! Load harness: what the proxy costs end to end over loopback, against a byte relay and against no proxy at all.
//!
//! ## The comparison (`cargo bench --bench load`)
//!
//! Three paths to the same backend, measured in one run at 1, 16 and 64 concurrent clients: **direct**,
//! **HAProxy** in TCP mode (a byte relay: the harness finds `haproxy` on PATH or in /usr/sbin, or runs
//! `apt-get install -y haproxy` when it is root; when it cannot, it says why and skips that column), and
//! **tenantwall** as its own process (the release binary) with SCRAM-SHA-256 authentication and a field-mode rule,
//! so every find is parsed, checked, given the tenant filter and relayed, and every reply mapped back; beside it,
//! when `scripts/build-pgo` has left one in `<target>/pgo/tenantwall` (or `TW_PGO_EXE` names one), the
//! profile-guided build of the same source, as a fourth path with its own ratios line (thirteenth round). The load
//! generator is the official Rust driver: each client is its own `mongodb::Client` with one connection, sending
//! `find_one` by key back to back for a window of 1.5 s after a 0.5 s warm-up; every find must return its
//! document. Every path and client count is measured in rounds, the paths' order changing from round to round
//! in a balanced design (over each cycle of rounds every path runs in every position, and right after every
//! other path, equally often: [`round_order`]), in whole cycles: 4 rounds with a PGO build beside the plain one
//! (four paths), 6 without (`TW_LOAD_ROUNDS` is rounded up to whole cycles; `TW_LOAD_SECS` sets the window);
//! each row gives the medians over rounds,
//! with the relay's CPU time per command, and each ratio is the median of the rounds' own ratios, with the
//! middle half of them in brackets (fourteenth round; before it, one 3 s window per cell in a fixed order) and,
//! from six rounds on, the 95% confidence interval of that median after "CI" (fifteenth round, [`median_interval`]);
//! a last block says for each build whether issue 10's goals are met, missed or undecided by those intervals
//! ([`goal_verdict`]). Clients on
//! the direct and HAProxy paths scope the filter themselves, in exactly the shape tenantwall forwards
//! (`{$and: [{k}, {tenantId: {$eq}}]}`), so the backend does the same work on every path. Two backends: the *fast
//! stub* (`stub/mod.rs`, a hand-written stand-in for measuring proxy overhead only, answering at once; in its own
//! process since the fifteenth round, as a backend is, not on the load generator's runtime) and
//! nx-27017 (the real MongoDB-compatible test server, from the project virtualenv, 100 documents). The ratios line
//! gives, per backend: tenantwall's p50 over HAProxy's at 1 client, *total* latency against total latency (driver,
//! loopback hops and backend included: `t / h`); the latency tenantwall *adds* over the latency HAProxy adds, both
//! over direct, at 1 client (`(t - d) / (h - d)`, "n/a" when in any round HAProxy adds under 1 µs or a tenth
//! of `d`, as against nx-27017); and tenantwall's
//! throughput over HAProxy's at 64 clients. Issue 10's latency goal is stated on the first, the total: with the
//! stub at d = 22 µs and h = 73 µs, 1.10× total allows tenantwall to add 1.14× what HAProxy adds. About 4 min.
//!
//! tenantwall runs with its defaults, so the one tenant's 64 clients meet the per-tenant cap of 32 commands in
//! flight (`limits.max_in_flight`): at 64 clients half of them queue in the proxy, as they would in production.
//!
//! Latest run (2026-11-29 10:52, fifteenth round: 4 rounds of 1.5 s, one whole cycle of the balanced order,
//! medians over rounds; the stub in its own process; 2-core x86_64 VM, load average 1.5–2.6; the PGO build is the
//! script's, with BOLT):
//!
//! | backend  | path           | clients | throughput   | p50     | p99     | relay CPU per command |
//! |----------|----------------|---------|--------------|---------|---------|-----------------------|
//! | stub     | direct         | 1       | 10,306 cmd/s | 95 µs   | 168 µs  | n/a                   |
//! | stub     | HAProxy        | 1       | 5,288 cmd/s  | 181 µs  | 384 µs  | 59.6 µs               |
//! | stub     | tenantwall     | 1       | 5,396 cmd/s  | 179 µs  | 336 µs  | 62.3 µs               |
//! | stub     | tenantwall PGO | 1       | 5,626 cmd/s  | 173 µs  | 265 µs  | 56.7 µs               |
//! | stub     | direct         | 16      | 44,349 cmd/s | 344 µs  | 786 µs  | n/a                   |
//! | stub     | HAProxy        | 16      | 36,337 cmd/s | 407 µs  | 1.06 ms | 15.2 µs               |
//! | stub     | tenantwall     | 16      | 31,412 cmd/s | 485 µs  | 1.12 ms | 19.0 µs               |
//! | stub     | tenantwall PGO | 16      | 32,705 cmd/s | 470 µs  | 1.07 ms | 18.0 µs               |
//! | stub     | direct         | 64      | 53,652 cmd/s | 1.14 ms | 3.30 ms | n/a                   |
//! | stub     | HAProxy        | 64      | 37,938 cmd/s | 1.54 ms | 4.77 ms | 14.9 µs               |
//! | stub     | tenantwall     | 64      | 34,292 cmd/s | 1.71 ms | 4.58 ms | 17.5 µs               |
//! | stub     | tenantwall PGO | 64      | 34,011 cmd/s | 1.75 ms | 4.98 ms | 16.8 µs               |
//! | nx-27017 | direct         | 1       | 657 cmd/s    | 1.38 ms | 2.34 ms | n/a                   |
//! | nx-27017 | HAProxy        | 1       | 605 cmd/s    | 1.63 ms | 2.44 ms | 60.2 µs               |
//! | nx-27017 | tenantwall     | 1       | 583 cmd/s    | 1.64 ms | 2.59 ms | 73.5 µs               |
//! | nx-27017 | tenantwall PGO | 1       | 599 cmd/s    | 1.63 ms | 2.46 ms | 62.8 µs               |
//! | nx-27017 | direct         | 16      | 677 cmd/s    | 19.9 ms | 66.8 ms | n/a                   |
//! | nx-27017 | HAProxy        | 16      | 604 cmd/s    | 23.3 ms | 72.3 ms | 59.8 µs               |
//! | nx-27017 | tenantwall     | 16      | 657 cmd/s    | 20.9 ms | 71.4 ms | 68.4 µs               |
//! | nx-27017 | tenantwall PGO | 16      | 600 cmd/s    | 23.6 ms | 61.3 ms | 62.1 µs               |
//! | nx-27017 | direct         | 64      | 666 cmd/s    | 94.6 ms | 141 ms  | n/a                   |
//! | nx-27017 | HAProxy        | 64      | 660 cmd/s    | 94.9 ms | 127 ms  | 56.4 µs               |
//! | nx-27017 | tenantwall     | 64      | 650 cmd/s    | 95.7 ms | 152 ms  | 73.6 µs               |
//! | nx-27017 | tenantwall PGO | 64      | 563 cmd/s    | 111 ms  | 149 ms  | 68.9 µs               |
//!
//! | backend  | build          | p50 / HAProxy's, 1 client | added p50 / HAProxy's, 1 client | throughput / HAProxy's, 64 |
//! |----------|----------------|---------------------------|---------------------------------|----------------------------|
//! | stub     | tenantwall     | 1.01× (0.96–1.08)         | 1.01× (0.91–1.18)               | 0.98× (0.84–1.12)          |
//! | stub     | tenantwall PGO | 1.00× (0.96–1.10)         | 1.00× (0.91–1.23)               | 0.94× (0.84–1.04)          |
//! | nx-27017 | tenantwall     | 1.05× (0.92–1.19)         | n/a                             | 0.95× (0.89–1.01)          |
//! | nx-27017 | tenantwall PGO | 1.03× (1.00–1.04)         | n/a                             | 0.94× (0.88–1.00)          |
//!
//! Four rounds are too few for an interval of the median, so the run judges no goal ("not judged"); its middle
//! halves span ±5–15% around the medians. What decides a goal within one run is the quick mode with many
//! rounds: the fifteenth round below (72 rounds: the PGO build 0.99× at 1 client, CI 0.97–1.02, met; 1.01× at
//! 64, CI 0.94–1.08, undecided). At 64 clients two runs of 180 and 120 rounds gave 0.97× (CI 0.96–0.99, met) and
//! 0.91× (CI 0.90–0.94, missed) with the machine in different states: the throughput goal is met or missed
//! with the machine's state, as that round explains. The fourteenth round's full runs, with the stub in the
//! load generator's process, gave the PGO build 1.27× / 1.54× / 0.92× (08:21), 1.07× / 1.18× /
//! 0.99× (08:26), 1.06× / 1.10× / 0.91× (08:35, beside a compile) and 0.96× / 0.92× / 0.99× (08:47), and the
//! plain build 1.39× / 1.74× / 0.79×, 1.09× / 1.20× / 0.88×, 1.11× / 1.19× / 0.92× and 1.22× / 1.51× / 0.93×.
//! Older runs, one 3 s window per cell in a fixed order, are quoted in the rounds below.
//!
//! The final paired run (quick mode, 9 rounds of 1.5 s, the code before this work and after it side by side,
//! 2026-11-28 00:42, load average 4.1–5.5; medians over rounds of each round's ratio to its HAProxy cell):
//!
//! | path       | p50, 1 client | throughput, 64 clients | p50 / HAProxy's, 1 | added / HAProxy's, 1 | throughput / HAProxy's, 64 | CPU per command, 1 / 64 |
//! |------------|---------------|------------------------|--------------------|----------------------|----------------------------|-------------------------|
//! | direct     | 26 µs         | 24,686 cmd/s           | 0.44×              | 0.00×                | 1.60×                      | -                       |
//! | HAProxy    | 66 µs         | 15,268 cmd/s           | 1.00×              | 1.00×                | 1.00×                      | 15.8 / 15.7 µs          |
//! | before     | 72 µs         | 14,316 cmd/s           | 1.19×              | 1.31×                | 0.89×                      | 27.3 / 25.2 µs          |
//! | after      | 72 µs         | 14,323 cmd/s           | 1.15×              | 1.26×                | 0.92×                      | 25.8 / 24.0 µs          |
//!
//! Issue 10's goals: ≤ 1.10× at 1 client and ≥ 0.95× at 64 clients against the stub. **Not met**: 1.15× and
//! 0.92× in the final paired run, 1.10× and 0.93× in an earlier one (00:26, load average 3.5–4.4); the code
//! before gave 1.00×–1.21× and 0.89×–0.98× over five such runs (7–9 rounds each). Against nx-27017 the run of
//! 2026-11-27 met both (1.05×, 1.09×); tonight's two gave 1.63×, 1.09× and 1.45×, 0.91×, while direct's own 1-client
//! p50 moved from 1.68 ms to 2.22 ms between them: that backend's time swamps the proxy's, and its rows decide
//! nothing either way. What is known about the stub's ratios follows.
//!
//! ## Where the time goes, and what was tried (2026-11-27/28)
//!
//! - *Syscalls* (`strace -c -f` on both relays, 1 client): per command tenantwall makes 2 `sendto` (one
//!   whole frame to the backend, one to the client), 2 `recvfrom` and 2 `epoll_wait`, and next to no `futex`;
//!   HAProxy the same plus 4 `clock_gettime`. One write per request and per reply, `TCP_NODELAY` on both
//!   sides, no extra reads (tokio skips the read that would return `EAGAIN` after a short read, so the pooled
//!   connection's liveness probe costs no syscall): nothing left to take out there.
//! - *Context switches* (`/proc/<pid>/task/*/status`, per command, 1 client): about 2 for both relays. The
//!   machine runs in two modes, visible on every path including direct: hops that preempt the task on the same
//!   CPU (about 1.2 voluntary + 1 involuntary switches per command; p50 HAProxy 52–63 µs, tenantwall 61–70 µs)
//!   or hops that sleep and wake the other CPU (about 1.9 voluntary + 0.1 involuntary; 2–4× the CPU per command
//!   and 2–4× the p50, e.g. HAProxy 185–206 µs, tenantwall 175–260 µs). tenantwall lands in the slow mode more
//!   often than HAProxy; which mode a cell gets decides the 1-client ratio more than anything the proxy does.
//! - *CPU per command* (the relay's CPU time over the window divided by commands; the steadiest number here), 64
//!   clients, medians over rounds: HAProxy 12–18 µs; tenantwall 23.5–30.1 µs before (five runs); after, 24.0
//!   against 25.2 µs and 23.9 against 26.9 µs for the code before in the same paired runs (−5%, −11%), within
//!   the run-to-run spread (the instruction counts below are the firmer measure). At 64 clients driver, stub and relay saturate the two
//!   cores, so throughput follows the sum of their CPU per command: with about 80–90 µs for driver and stub, the
//!   0.95× goal needs the proxy at about 22 µs where HAProxy takes 16.
//! - *User-space instructions per command* (callgrind on the proxy process in the quick mode at 1 client, all
//!   threads, 2.5 s window, commands counted by `prepare_forward` calls): 53,324 before; 49,186 with the lsid
//!   patched in place instead of rebuilding the body (the driver-shaped find alone, `benches/rewrite.rs`
//!   `REWRITE_COUNT=find_driver`: 23,131 → 18,979); 44,050 with the reply's cursor id, batch size, error fields
//!   and the request's `maxTimeMS` looked up as bytes instead of through bson's UTF-8 key iterator; 41,548 with
//!   each worker remembering the virtual lsids it computed (SHA-256 was 6% of the proxy); 40,636 with each
//!   connection keeping its last metrics series instead of hashing labels per command. −24% in all. What
//!   remains: validating request and reply (required: nothing is relayed unparsed), the canonical checks and the
//!   filter rewrite, SHA-256 on a new lsid, tokio's I/O and timers.
//! - Relaying a reply without re-encoding it was not done: every reply must be parsed and validated before it is
//!   relayed (`src/backend.rs`), and its cursor id (ownership) and error fields (withholding) must be read; after
//!   that the re-encode is one allocation and a copy of a reply of about 100 bytes, under 1% of the profile.
//! - Tracing costs nothing measurable: one span per connection, none per command. There is no task hop per
//!   command: the client's task runs the whole backend exchange. A pool checkout is a mutex pop and push (about
//!   1% of the profile with the probe).
//! - Not kept, because the numbers did not support them: waking one waiter per freed in-flight slot instead of
//!   all of them (keeping the serve loop's reload and drain waits across commands, first tried here with no
//!   change beyond wall-time noise, was kept in the third round below, where instruction counts showed it). The
//!   latter, measured with the cap at 4 (`TW_QUICK_MAX_IN_FLIGHT=4`, 64 clients, 5 rounds): p99 7.5–11.6 ms
//!   instead of 20–145 ms (waking everyone lets the client that just finished barge back in while others starve)
//!   but 13.9–18.6k instead of 17.0–28.0k commands/s; at the default cap no change. The unfairness at a saturated
//!   cap is real and left for its own change.
//! - **Runtime shape, changed (2026-11-28, second round):** `tenantwall run` now serves connections on one
//!   single-threaded runtime per core (`src/workers.rs`): a connection stays on the worker it was given at
//!   accept, with its sockets and timers on that worker's own event loop, and the pool prefers connections the
//!   worker opened. Paired quick runs (9 rounds of 1.5 s; `before` the work-stealing runtime with two workers,
//!   `after` the per-core runtimes plus the second round of instruction work in `benches/rewrite.rs`):
//!
//!   | run (load average) | path | p50 / HAProxy's, 1 | throughput / HAProxy's, 64 | CPU per command, 1 / 64 |
//!   |---|---|---|---|---|
//!   | 02:00, 3.4 (a build beside it), 7 rounds | work-stealing, 2 workers | 0.96× | 0.99× | 42.4 / 21.6 µs |
//!   |  | work-stealing, 1 worker | 1.16× | 1.05× | 53.5 / 19.7 µs |
//!   |  | per-core runtimes | 1.06× | 1.13× | 27.4 / 16.7 µs |
//!   | 02:27, 2.5–4.1 | work-stealing, 2 workers | 1.11× | 1.02× | 39.7 / 26.1 µs |
//!   |  | per-core runtimes | 1.12× | 1.00× | 25.0 / 17.9 µs |
//!   | 03:24, 2.2–3.0 | before | 1.20× | 0.92× | 31.4 / 27.7 µs |
//!   |  | after | 1.16× | 1.05× | 51.6 / 17.2 µs |
//!   | 03:37, 2.0–2.2, nothing else running, every path in the slow mode (HAProxy 187 µs) | before | 1.49× | 0.79× | 89.5 / 37.1 µs |
//!   |  | after | 1.27× | 1.03× | 82.1 / 22.8 µs |
//!
//!   HAProxy took 13.6–18.3 µs of CPU per command at 64 clients in the same runs (18.0 in the last). At 64 clients the per-core runtimes take
//!   a third less CPU per command than the work-stealing one did, about HAProxy's own, and the throughput
//!   goal (≥ 0.95×) was met in all four runs. The 1-client goal (≤ 1.10×) was not: in the rounds where
//!   every path ran in the machine's fast mode, tenantwall's p50 was 59–60 µs against HAProxy's 53 µs (1.13×;
//!   direct 25 µs), with 19 µs of CPU per command against HAProxy's 13 µs: the parse, checks and rewrite a
//!   byte relay does not do (about 31,000 user-space instructions per command by callgrind on the proxy, of
//!   which the request's decode and decision about 12,000 and tokio's I/O, timers and scheduling about 7,000).
//!   The 1-client CPU column moves with the machine's mode, not with the code (the 51.6 µs above is the median
//!   of rounds most of which caught the slow mode). Below the bound, each worker opening its own backend
//!   connections may hold more of them than one worker would, never more than `max_connections`.
//!   At saturation (`-- many`, closed loop, 10,000 clients sharing 64 backend connections; alternating runs on
//!   the quiet machine at 03:36) the per-core runtimes serve 11,500–14,490 commands/s against 11,940–11,990 for
//!   the work-stealing runtime, with p50 0.65–0.84 s against 0.33 s but p99 1.7–1.8 s against 4.1–4.2 s:
//!   commands are served in their order rather than letting the one just finished barge back in. (Earlier
//!   runs beside a build gave 7,750–7,960 against 8,910–9,840, with the same shape of latencies; without the
//!   pool's preference for waiters on the connection's own worker, 5,500–7,400.) RSS with 10,000 clients fell
//!   from 175–178 to 136–141 MiB, because the command's checkout no longer carries the future that opens a
//!   backend connection (boxed: 2,640 → 864 bytes per waiting command). The attack bench (`benches/attack.rs`)
//!   still runs the proxy in process on a work-stealing runtime.
//! - **Third round (2026-11-28 morning): the connection's own work per command.** Callgrind on the proxy in the
//!   quick mode at 1 client (2.5 s window, instructions of the connection's task divided by `prepare_forward`
//!   calls; tokio's driver and scheduler come on top, about 5,000 more), each step on top of the last:
//!
//!   | step | instructions per command |
//!   |---|---|
//!   | start of the round (the per-core runtimes above) | 28,558 |
//!   | reply lookups (cursor id, batch size, error fields) and the request's `maxTimeMS` read through the parsed bodies' index of top-level fields; the tenant looked up in the policy again only after a reload; the driver's `lsid` overwritten in place by its exact bytes, keeping the body's index (then `OpMsg::with_binary_overwritten`, since `OpMsg::overwrite_binary`) | 25,899 |
//!   | the reload, drain and authentication waits kept across commands instead of registering with their channels and deregistering for every command | 24,932 |
//!   | the tenant gate passed without registering for a wake-up or reading the clock when there is no hold and room under the cap | 24,564 |
//!   | one timer per forwarded command, polled after each backend operation (`within!`), instead of a `Timeout` around each operation's future (each moved twice: a checkout's is most of a kilobyte) | 23,429 |
//!   | a whole frame reads no clock; maps keyed by policy-defined names (backends, tenant gates) hashed with FNV-1a instead of SipHash | 22,852 |
//!
//!   −20% in all; with the validation walk's own work (`benches/rewrite.rs`, third round) merged after the last
//!   step. Paired quick runs (`before` the start of the round, `after` its end), the machine in its slow mode
//!   throughout (direct 102–130 µs, HAProxy 207–229 µs at 1 client, where the fast mode gives about 25 and 53):
//!
//!   | run (load average) | path | p50 / HAProxy's, 1 | added / HAProxy's, 1 | throughput / HAProxy's, 64 | CPU per command, 1 / 64 |
//!   |---|---|---|---|---|---|
//!   | 05:05, 1.2–1.9, 9 rounds | before | 1.23× | 1.44× | 1.06× | 93.8 / 25.6 µs |
//!   |  | after (without the last step) | 1.06× | 1.16× | 1.07× | 92.3 / 24.1 µs |
//!   | 05:24, 1.2–1.7, 9 rounds | before | 1.26× | 1.60× | 1.07× | 97.7 / 26.2 µs |
//!   |  | after | 1.36× | 1.87× | 1.01× | 89.0 / 24.8 µs |
//!   | 05:41, 0.8–1.3, 15 rounds, 1 client only | before | 1.34× | 1.79× | - | 97.2 µs |
//!   |  | after | 1.30× | 1.74× | - | 88.1 µs |
//!   | 05:45, 0.5–0.8, 9 rounds, 1 client only | before | 1.36× | 1.82× | - | 99.0 µs |
//!   |  | after | 1.21× | 1.50× | - | 85.4 µs |
//!
//!   HAProxy took 50.7–65.7 µs of CPU per command at 1 client and 21.3–21.7 µs at 64 in these runs. The CPU per
//!   command fell by 6–10% at both counts, as the instruction counts say; the 1-client ratios moved both ways
//!   with the slow mode's scheduling, which decides them more than the proxy's 23,000 instructions (about 8 µs)
//!   do. The throughput goal stayed met; the 1-client goal (≤ 1.10×) was met in one run and not in three, and no
//!   run caught the fast mode.
//! - **Fourth round (2026-11-28, 07:00–08:20): the reply path, the waits, and the in-flight cap.** Same
//!   measure, each step on top of the last:
//!
//!   | step | instructions per command |
//!   |---|---|
//!   | start of the round (the third round's end, with the serve loop's select now biased: the authentication deadline and the server's events before the reader) | 22,960 |
//!   | a reply's cursor read once for both its id (cursor table) and its batch size (metric), `session::ReplyCursor`; withholding reads the reply's top-level keys once before looking any field up | 22,016 |
//!   | the reload and drain wait polled only once its channels woke it (`connection/woken.rs`), not twice per command | 21,160 |
//!   | the generic arguments matched at once; the gate's finishing command wakes one waiter at the cap (`notify_one`) and the hold waiters only while a hold is in force | 20,953 |
//!   | a reply write that completes at once reads no clock and arms no timeout | 20,718 |
//!   | the command name parsed once per command, borrowed for the logs | 20,670 |
//!   | the command to forward and the reply handed over with their flags set in place, not copied with new flags (which promoted a `Bytes` to shared, an allocation, and cloned a `Vec`) | 20,401 |
//!
//!   −11% (the whole process, tokio included: 26,978 → 24,279). Tried and taken out: reading keys of 8–15
//!   bytes as two words and keys near a document's end through the word that ends there (no change in either
//!   count: the keys that reach the byte-by-byte read in this workload are neither). The gate change is the one that shows under
//!   load: every command that finished used to wake every command waiting at its tenant's cap, so with 100
//!   clients per tenant and the default cap of 32, each finished command ran some 68 tasks that then waited
//!   again. `-- many`, closed loop, 10,000 clients: 12,269 / 13,177 commands/s before, 27,218 / 27,985 / 27,286
//!   / 28,903 after (p50 714 / 683 ms → 331–349 ms, p99 1.94–1.96 s → 0.96–1.02 s), alternating builds.
//!   Paired quick runs (slow mode throughout: direct 86–127 µs, HAProxy 171–213 µs at 1 client):
//!
//!   | run | path | p50 / HAProxy's, 1 | added / HAProxy's, 1 | throughput / HAProxy's, 64 | CPU per command, 1 / 64 |
//!   |---|---|---|---|---|---|
//!   | 07:40, 5 rounds | start of the round | 1.21× | 1.38× | 1.06× | 66.3 / 17.8 µs |
//!   |  | after the gate change | 1.13× | 1.22× | 1.03× | 66.1 / 16.9 µs |
//!   | 07:52, 7 rounds | start of the round | 1.29× | 1.61× | 1.06× | 88.0 / 22.9 µs |
//!   |  | after the gate's review fixes | 1.36× | 1.89× | 1.04× | 89.1 / 22.6 µs |
//!   | 08:55, 7 rounds | start of the round | 1.29× | 1.71× | 0.96× | 89.7 / 24.1 µs |
//!   |  | end of the round | 1.27× | 1.62× | 0.98× | 86.4 / 22.8 µs |
//!
//!   Where the 1-client gap is, from `/proc/<pid>/stat` over a 1-client run (3 rounds of 3 s, about 35,000
//!   commands each): tenantwall 36 µs of user and 54 µs of system time per command, HAProxy 12 µs and 56 µs.
//!   The kernel's share is the same (strace: one `epoll_wait`, `recvfrom` and `sendto` per direction, no
//!   futex, about 1.9 voluntary context switches per command, like HAProxy); the difference is user time, three
//!   times what 25,000 instructions take at a normal rate: in the slow mode, with client, stub and proxy sharing
//!   two cores, the proxy's code and data are cold at every command. So the next lever is the memory a command
//!   touches, not the instruction count alone: the connection's task future is 23 KiB (`handle_frame`'s 10.7,
//!   `handle_msg`'s 5.0 and `relay`'s 1.8 KiB nested, each awaited future's prefix copied twice, 768 bytes for
//!   `handle_msg`'s). Boxing `handle_msg`'s future (serve future 23 → 4 KiB; +1.3% instructions; −29 MiB idle
//!   RSS with 10,000 clients) gave 12–15% less CPU per command at 1 client in two 9-round runs, nothing in a
//!   third, and 3% less in a 15-round run (76.7 → 74.6 µs; p50 239 → 232 µs): not kept on that evidence.
//! - **Fifth round (2026-11-28, 09:25–10:50): the validation walk and large inserts** (`benches/rewrite.rs`,
//!   fifth round: the insert's instructions −37%, the find's −5%). The load's commands are small `find_one`s, so
//!   its numbers barely move. Paired quick run, 5 rounds of 1.5 s (10:30, slow mode):
//!
//!   | path | p50 / HAProxy's, 1 | added / HAProxy's, 1 | throughput / HAProxy's, 64 | CPU per command, 1 / 64 |
//!   |---|---|---|---|---|
//!   | start of the round (be23316) | 1.35× | 1.80× | 1.08× | 74.6 / 21.6 µs |
//!   | before the flushes below | 1.25× | 1.50× | 1.09× | 75.5 / 21.8 µs |
//!
//!   Every write to a client or a backend is now flushed (a TLS stream holds what its socket could not take
//!   until it is flushed): about 100 instructions per command (connection task, callgrind, 1 client: 20,540 →
//!   20,641). Paired again with the round's start (11:00, 5 rounds): start 1.26× / 1.64× / 1.16× with 80.1 /
//!   21.2 µs, end 1.40× / 1.98× / 1.07× with 81.5 / 22.5 µs. Within this machine's spread: the earlier pair put
//!   the end ahead at 1 client, this one behind; the throughput goal stays met in both.
//!
//!   Tried and not kept: the release build with fat LTO and one codegen unit (`CARGO_PROFILE_RELEASE_LTO=fat
//!   CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1`). Against the same code without it (10:45, 5 rounds): CPU per command
//!   at 1 client 58.9 against 75.8 µs (lower in four rounds of five), p50 1.18× against 1.26× HAProxy's; but at 64
//!   clients 0.91× against 1.09× HAProxy's throughput, lower in all five rounds (CPU per command 21.5 against
//!   20.4 µs on average). It does not reach the 1-client goal either, and it costs the goal that is met; building
//!   it also takes several minutes more on this machine.
//! - **Sixth round (2026-11-28, 11:40–12:45): the decision's steps around the walk** (`benches/rewrite.rs`, sixth
//!   round: the find's instructions −7%, the driver's find −6%). Connection task, callgrind, 1 client, each step
//!   on top of the last:
//!
//!   | step | instructions per command |
//!   |---|---|
//!   | start of the round (b1f5a50) | 20,628 |
//!   | sessions found in one pass; the reply's tenant field shared; the plan edited in place and boxed where it is made | 20,334 |
//!   | a rewritten command's driver-shaped `lsid` overwritten in the body the rewrite made, not copied once more | 20,082 |
//!   | the command classified by its first key's bytes; its name read as text only where a log line is written | 19,883 |
//!
//!   −3.6% in all. Paired quick run, 5 rounds of 1.5 s (12:08, slow mode: HAProxy 192 µs at 1 client): start
//!   1.35× / 1.72× / 0.99× with 70.9 / 21.7 µs of CPU per command, end 1.24× / 1.58× / 0.96× with 78.8 / 21.1 µs.
//!   Two more runs of the end (below) gave 1.36× / 1.60× / 1.05× and 1.45× / 2.01× / 0.90×: at 64 clients the
//!   ratio to HAProxy's throughput moved between 0.89× and 1.05× from round to round within one run, so today's
//!   runs put the throughput goal (≥ 0.95×) at the edge rather than clearly met, with the proxy's CPU per command
//!   (20–22 µs) about 4 µs above HAProxy's (17–21 µs) in every round. The 1-client goal is not met.
//!
//!   Tried and not kept: one codegen unit without LTO (`CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1`). Two paired runs
//!   against the same code (12:24 and 12:35, 5 rounds each): 1.18× against 1.36× and 1.39× against 1.45× at 1
//!   client, 1.05× against 1.05× and 0.91× against 0.90× at 64; its CPU per command at 1 client was lower in
//!   seven rounds of ten, but its instructions per command only 1.2% fewer (19,647 against 19,885). Not enough
//!   to tell from this machine's spread, for a release build of the whole tree that takes longer.
//! - **Seventh round (2026-11-28, 13:15–14:40): fields found once, by name, and one timer per connection.**
//!   Connection task, callgrind, 1 client, each step on top of the last:
//!
//!   | step | instructions per command |
//!   |---|---|
//!   | start of the round (02708eb) | 19,877–19,890 |
//!   | the walk notes where `$db`, the sessions, the filter, the collation, `maxTimeMS` and a reply's `cursor` are; lookups of them read their slot (`benches/rewrite.rs`, seventh round) | 19,141 |
//!   | the lsid's `id` read where its one-element document holds it, not searched for | 18,932 |
//!   | one backend-deadline timer per connection (`src/connection/deadline.rs`), left armed at an earlier command's deadline and armed again when it fires early, instead of a tokio timer registered and removed per command | 18,758–18,809 |
//!   | after review: a slot's element checked against its key, an index that could not note a key forgotten | 19,009–19,030 |
//!   | the index's spans packed into three bytes and held to 14 elements: a message is 128 bytes, not 152, and moves without a `memcpy` call | 18,869 |
//!
//!   −5.1% in all (the runs move by about 50 with how many commands the window caught). The timer step took
//!   about 440 instructions of timer registration out of each command (the wheel's insert and remove, the
//!   `Sleep`'s creation and first poll) and gave back about 200 to moves of the larger futures around it; the
//!   driver's per-park work (`process_at_time`, `next_expiration`, about 800) is unchanged, as any timer keeps
//!   it. Paired quick run, 7 rounds of 1.5 s (14:23, load average 0.9–1.7, slow mode throughout: HAProxy 138–234
//!   µs at 1 client): start 1.30× / 1.56× / 1.07× with 76.2 / 18.9 µs of CPU per command, end 1.20× / 1.41× /
//!   1.02× with 70.9 / 19.1 µs (HAProxy 40.7 / 15.9 µs). At 64 clients the two builds traded places from round
//!   to round (end ahead in three of seven): no change there beyond the noise; at 1 client the end used less CPU
//!   per command in five rounds of seven. A second paired run right after (7 rounds, HAProxy 191 µs at 1 client,
//!   45.3 / 20.3 µs of CPU per command): start 1.27× / 1.71× / 1.05× with 76.3 / 22.4 µs, end 1.24× / 1.62× /
//!   1.02× with 78.8 / 22.2 µs. With the packed index too (the round's last step), two more paired runs (15:00
//!   and 15:02, 7 rounds each, load average 1.1–1.8; HAProxy 43.7 / 16.2 and 40.4 / 16.7 µs): start 1.24× /
//!   1.47× / 1.05× with 69.7 / 18.1 µs and end 1.04× / 1.08× / 1.06× with 64.7 / 16.9 µs, then start 1.24× /
//!   1.86× / 1.08× with 67.2 / 18.8 µs and end 1.45× / 2.32× / 1.00× with 71.2 / 21.4 µs. The first of them is the
//!   first run in which tenantwall's median 1-client ratio came within the goal (≤ 1.10×); the second, minutes
//!   later, put the same build at 1.45×. In wall time the builds are within the machine's noise of each other; the
//!   instruction counts are the firm result. `-- many` on the end build: 64 backend connections, RSS 129 MiB idle
//!   and 135 MiB at peak (unchanged by the timer each connection now keeps), 9,082 commands/s at one find per
//!   client per second (p50 0.53 ms).
//! - **Eighth round (2026-11-28, 15:50–17:20): the release build optimised as one unit.** The 1-client gap is
//!   in user time, as the fourth round found. Read per thread from `/proc` in a 1-client run (15:58, per-crate
//!   build): the connection's worker spent about 21 µs of user and 49 µs of system time per command, HAProxy about
//!   5 and 40-45; the only thread with work was the one worker; no page faults. Both make the same system
//!   calls per hop (`epoll_wait`, `recvfrom`, `sendto`; HAProxy adds `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`
//!   twice and a `recvfrom` that returns `EAGAIN`), so the difference is user-space work done with cold caches
//!   (the ~23,000 instructions of a command, runtime included, at about one per nanosecond after each wake-up,
//!   where the warm criterion loop runs ten). Less code to bring back in should then help: `[profile.release]` now
//!   sets `lto = "fat"` and `codegen-units = 1`, and the binary shrank from 12.1 to 8.9 MB. Connection task,
//!   callgrind, 1 client, one commit built four ways:
//!
//!   | release profile | instructions per command |
//!   |---|---|
//!   | per crate (the former default) | 18,838 |
//!   | `lto = "thin"` | 18,233 (−3.2%) |
//!   | `codegen-units = 1` | 18,553 (−1.5%) |
//!   | `lto = "fat"`, `codegen-units = 1` (now) | 17,296 (−8.2%) |
//!
//!   Two paired quick runs, 7 rounds of 1.5 s each (16:13 and 16:17, load average 1.2–1.6): per crate 1.36× /
//!   2.04× / 1.06× with 80.0 / 21.9 µs of CPU per command, one unit 1.28× / 1.78× / 1.04× with 68.5 / 21.4 µs
//!   (HAProxy 46.6 / 19.8 µs); then per crate 1.19× / 1.36× / 1.02× with 83.4 / 22.6 µs, one unit 1.04× /
//!   1.09× / 1.05× with 61.7 / 20.5 µs (HAProxy 51.0 / 17.8 µs): the second run within the 1-client goal. Both runs
//!   have the machine in its slow mode (HAProxy at 196-200 µs at 1 client). Noticed and left: the
//!   connection loop's futures are large (in a debug build, 3.6 KB for a frame's handling, 3.0 KB for a
//!   message's, 1.8 KB for the relay, 0.9 KB for a checkout), and moving them into place costs about five
//!   `memcpy` calls and 450 instructions per command; boxing or shrinking them is the next step there.
//!   `-- many` on the one-unit build (17:20): 64 backend connections, RSS 128 MiB idle and 134 MiB at peak, 9,082
//!   commands/s at one find per client per second (p50 0.55 ms), 26,653 closed loop.
//! - **Ninth round (2026-11-28, 21:10–22:00): what every command paid around its decision.** Connection task,
//!   callgrind, 1 client, each step on top of the last:
//!
//!   | step | instructions per command |
//!   |---|---|
//!   | start of the round (f462f6d) | 17,022 |
//!   | each stream (the client's, each backend's) owned by one reader that writes through it too, not split with `tokio::io::split`, whose halves lock a mutex on every read and write: a connection's reads and writes take turns in one task | 16,715 (−1.8%) |
//!   | the policy generation kept per connection and checked with one atomic load (`Shared::refresh`) where each command read it up to four times through the lock (a read lock and an `Arc` count each, on lines every worker shares; one count per command remains, for the command's own copy); the tenant's gate kept per connection, not looked up in the server's map (its lock, a hash of the id) per command | 16,465 (−1.5%) |
//!   | a reply that is only a body (nearly every reply) written after its 21-byte head from where the body is held, one vectored write, instead of encoded into a new frame (one allocation and one copy of the reply fewer per command, the whole batch's copy fewer for a large one) | 16,339 (−0.8%) |
//!   | the same for each command sent to the backend (`BackendConn::send`): a command that is only a body goes out after its head, not encoded into a frame (`benches/rewrite.rs`, ninth round: the find −4.9%) | 15,914 (−2.6%) |
//!
//!   −6.5% in all. Paired quick runs, base the round's start (21:44 and 21:53, 7 and 9 rounds of 1.5 s, the
//!   machine in its slow mode: HAProxy at 109 and 119 µs at 1 client): 1.23× / 1.38× / 1.08× with 54.2 / 18.7
//!   µs of CPU per command at the start against 1.38× / 1.71× / 1.15× with 51.3 / 17.8 µs at the end; then
//!   1.36× / 1.68× / 0.89× with 49.9 / 18.0 µs against 1.35× / 1.66× / 0.86× with 52.2 / 18.7 µs (both without
//!   the last step). The two builds trade places from run to run: within the machine's noise, as each round's few
//!   percent of instructions has been. With the last step (22:28, 9 rounds, HAProxy at 104 µs at 1 client):
//!   start 1.32× / 1.60× / 0.87× with 47.8 / 17.6 µs, end 1.08× / 1.14× / 0.91× with 48.0 / 17.4 µs: the end
//!   within the 1-client goal in that run. The full comparison (`cargo bench --bench load`, 22:09, load average
//!   under 1.5, before the last step): 1.24× / 1.44× / 0.96× against the stub, 0.93× and 1.00× against nx-27017.
//!
//!   These runs are the first in which the 64-client ratio fell below 0.95× in most runs (0.86–0.91× in four of
//!   six, 0.96–1.15× in the others): HAProxy served 35,000–38,000 commands/s at 64 clients at 13.8–14.9 µs of CPU
//!   per command, where earlier runs measured it at 28,000–30,000 and 15–18.5 µs; tenantwall's 17.4–18.7 µs is
//!   what it was. Not the in-flight cap: with the cap raised to 64, so that none of the 64 clients queue in the
//!   gate (`TW_QUICK_MAX_IN_FLIGHT=64`, 7 rounds, 22:33), the ratio was 0.88× at 17.3 µs per command, against
//!   0.87× at 18.0 µs with the default cap of 32 right after. The 64-client goal then needs the relay's CPU per
//!   command down by about a fifth, the same as the 1-client goal. What remains is spread thin: no
//!   function of the connection's own takes more than 5% of its instructions. The largest single item is
//!   `memcpy`, about 750 instructions per command, which moves about 9 KiB: each awaited future is built and then
//!   copied into its caller's state (sizes from `-Zprint-type-sizes`, release build: `handle_frame` 3,632 bytes,
//!   `handle_msg` 2,976, `relay` 1,824, the checkout 912). Boxing one of them moves the copy rather than
//!   removing it (the fourth round measured it); flattening them into one function would remove the copies at the
//!   price of the connection's structure. Left as it is.
//! - **Tenth round (2026-11-28, 22:55 – 2026-11-29, 00:10): the decision's lookups** (`benches/rewrite.rs`,
//!   tenth round: the find −8.9% in instructions, −11% to −13% in time, under the 500 ns goal). Connection task,
//!   callgrind, 1 client: 15,914 → 15,543 (keys of eight to fifteen bytes read inline by the walk, `raw::get`
//!   inlined, the names' check in one pass) → 15,285 (the argument check's table and loop, the sessions' count
//!   inlined) → 15,253 (the index moved in place, keys near a document's end read inline): −4.2%. Paired quick
//!   run (23:33, 9 rounds of 1.5 s, load average 1.2–2.0; HAProxy 107 µs at 1 client, 38.9 / 14.4 µs of CPU per
//!   command): start of the round 1.15× / 1.25× / 0.90× with 50.4 / 18.3 µs, end 1.12× / 1.22× / 0.93× with
//!   47.6 / 18.5 µs. A second (23:46, 9 rounds; HAProxy 114 µs at 1 client, 40.7 / 14.5 µs): start 1.29× /
//!   1.62× / 0.89× with 49.5 / 18.1 µs, end 1.16× / 1.30× / 0.89× with 48.8 / 18.9 µs. Both load goals stay
//!   unmet. The quick mode now also reports the user-mode part of each relay's CPU time (`utime`): in the second
//!   run 4.8 µs per command at 64 clients at the start, 4.4 at the end, HAProxy's 1.8 (at 1 client 12.8, 14.6
//!   and 6.8 µs). A third, with the round's last steps (00:04, 9 rounds, load average about 1; HAProxy 113 µs at
//!   1 client, 37.8 / 15.1 µs, of which user 5.1 / 1.6): start 1.10× / 1.19× / 0.87× with 49.3 / 17.4 µs (user
//!   11.5 / 3.7), end 1.18× / 1.33× / 0.91× with 49.6 / 17.3 µs (user 13.9 / 4.0). At 64 clients the end was
//!   ahead of the start in all three runs (0.93×, 0.89×, 0.91× against 0.90×, 0.89×, 0.87×); at 1 client the
//!   two traded places.
//!
//!   Where the 64-client gap is, split by user and system time (`/proc/<pid>/stat` sampled every 0.25 s over 3
//!   rounds of 3 s at 64 clients, 22:59, about 315,000 commands per relay): HAProxy 1.5 µs of user and 15.3 µs
//!   of system time per command, tenantwall 4.7 and 13.7 µs. tenantwall's kernel time is the lower one:
//!   `perf stat` on the syscall tracepoints (64 clients, 3 s) counts per command 2 `recvfrom`, 2 `writev`, 0.36
//!   `epoll_wait` and 0.12 `write` (a wake of the other worker's event loop) for tenantwall against 3 `recvfrom`
//!   (one returning `EAGAIN`), 2 `sendto` and 0.34 `epoll_wait` for HAProxy. The whole gap is user time: about
//!   15,000–18,000 instructions per command (the parse and validation of request and reply, the decision and
//!   rewrite, the session and cursor bookkeeping, tokio's I/O) at about one instruction per cycle, where the same
//!   code runs at three to four per cycle in the criterion loop: with driver, stub and relay sharing two cores,
//!   the relay's code and data are cold at every command. The same sampling put the process's total at 18.4 µs
//!   against HAProxy's 16.9 µs per command in that run.
//! - **Eleventh round (2026-11-29, 01:45–02:40): where the user time goes under load, and the futures each
//!   command built.** The VM has no hardware counters, so `perf record -e cpu-clock` (4 kHz, 3 s at 64 clients)
//!   sampled where the time goes: tenantwall 72% in the kernel and 28% in user space, HAProxy 88% and 12%. No
//!   user-space function of the proxy's takes more than 3% of its samples; `memmove` takes 1.4% (5% of the
//!   user time), most of it moving futures into their callers' states.
//!
//!   Tried and not kept: 10% of the proxy's user samples land on or just after a `lock`-prefixed instruction,
//!   the hottest of them the tenant's byte counter (`bytes_received`), `documents_returned`, the reload wait's
//!   mutex and the generation's `Arc` count, which both workers write for every command of the one tenant. A
//!   build without the per-command metric updates (both byte counters, the documents, the command counter, both
//!   duration histograms, the backend time, `Stats::commands`) against the same code (02:07), 7 paired rounds at 64
//!   clients: 18.5 against 18.6 µs of CPU per command, 4.4 against 4.3 µs of it in user mode. Shared cache lines
//!   are not where the gap is; per-worker metrics were not built. The worker wakes of the tenth round (0.12
//!   `write`s per command) are tokio's time driver waking itself: each command queued at the tenant's cap
//!   (half of them at 64 clients and the default cap of 32) arms a timer for its wait, earlier than any the
//!   driver would wake for, and registering an earlier timer writes to the driver's event fd (`perf record -e
//!   syscalls:sys_enter_write --call-graph dwarf`: every such write under `gate::enter`'s `Sleep`). Left: with
//!   the cap raised so that nothing queues (the ninth round), throughput did not change.
//!
//!   The step kept: the common command builds no future for the frame's handling (`arrive` decodes an
//!   uncompressed message of ordinary size without waiting; `settle` takes the rest), the tenant's gate
//!   (`TenantEntry::try_enter`), the checkout (`BackendTarget::try_checkout`: an idle connection of the worker,
//!   probed with one read attempt) or the reply's write (`write_now`: one poll of the vectored write; what the
//!   client's socket does not take goes to `write_frame`, as before). Connection task, callgrind, 1 client:
//!   15,253 → 14,643 instructions per command (−4.0%); the whole process 18,480 → 17,907 (−3.1%); `memcpy`
//!   1,009 → 802 per command. Paired quick runs, the round's start against its end (ratios as above; CPU per
//!   command at 1 / 64 clients, user part in brackets):
//!
//!   | run | HAProxy | start | end |
//!   |---|---|---|---|
//!   | 02:18, 7 rounds, load average 0.9–1.7 | 44.9 / 17.6 µs (6.4 / 1.9) | 1.12× / 1.19× / 0.92×, 56.3 / 21.0 µs (17.1 / 5.9) | 1.05× / 1.11× / 0.88×, 49.8 / 20.6 µs (15.8 / 5.2) |
//!   | 02:29, 9 rounds, 1.3–2.0 | 39.5 / 14.9 µs (4.9 / 1.3) | 1.23× / 1.41× / 0.89×, 53.7 / 17.5 µs (13.8 / 4.6) | 1.29× / 1.53× / 0.90×, 53.1 / 18.0 µs (13.5 / 4.2) |
//!   | 02:32, 9 rounds, 1.4–2.0 | 45.9 / 16.5 µs (6.8 / 1.9) | 1.23× / 1.46× / 0.89×, 61.8 / 20.1 µs (17.6 / 4.9) | 1.03× / 1.04× / 0.90×, 51.7 / 19.4 µs (14.6 / 5.6) |
//!
//!   The end used less user time per command at 1 client in all three runs, and was within the 1-client goal in
//!   one; at 64 clients the two are level (0.88–0.92×) and the goal (≥ 0.95×) is not met. The load generator and
//!   the stub got cheaper since the first rounds (direct 52,000–63,000 commands/s at 64 clients, where the
//!   2026-11-28 runs measured 20,000–25,000; HAProxy 30,000–35,000 against 14,000–15,000), so the relay's own
//!   CPU is a larger share of the two cores than when the goal was first met. One worker instead of two (01:48,
//!   7 rounds): 0.74× against 0.86× at 64 clients, the other way round from the night before. `-- many` on the
//!   end build (02:45): 64 backend connections, RSS 118 MiB idle and 123 MiB at peak with 10,000 clients (128 and
//!   134 in the eighth round; not measured here whether the connection's smaller future is the cause), 9,086 commands/s at one
//!   find per client per second (p50 0.44 ms), 24,717 closed loop. The full comparison on the end build (`cargo
//!   bench --bench load`, 03:05, one run): against the stub 1.28× / 1.52× / 0.96× (HAProxy 118 µs at 1 client,
//!   25,434 commands/s at 64; tenantwall 151 µs and 24,402), against nx-27017 1.01× at 1 client and 1.06× at 64.
//! - **Twelfth round (2026-11-29, 03:15–04:30): the kernel's side of each write.** `perf stat` on the relay
//!   (64 clients, 3 s, system-call tracepoints and `task-clock`) found both relays making the same calls per
//!   command (2 reads, 2 writes, one packet per write, no pure ACKs), but tenantwall's writes were `writev` (a
//!   reply or a command is its 21-byte head and its body, written as two slices since the ninth round) where
//!   HAProxy's are `send`. `perf record -e cpu-clock` at 64 clients, per command: tenantwall's `writev` path
//!   (`vfs_writev`, `fdget_pos`, `sock_write_iter`, `rw_verify_area`, the `iovec` import, libc's wrapper) about
//!   1.0 µs, HAProxy's `send` path about 0.2 µs. On loopback (a standalone loop of 100,000 writes of a 271-byte
//!   message and the reads of them, 15 rounds, medians of two runs): `writev` of two slices 7.02–7.14 µs per round
//!   trip, one copy and `send` 6.73–6.82 µs, `sendmsg` of the two slices 6.93–7.00 µs. Kept: a message of head and
//!   body of up to 4 KiB is copied into one buffer per thread and offered in one write (`codec::write_small_once`,
//!   for the client's replies and the backend's commands); a longer one is still two slices in one vectored
//!   write, not copied. Instructions barely move (callgrind, 1 client: connection task 14,630 → 14,562, whole
//!   process 17,803 → 17,757; `memcpy` 798 → 860, the copies), the kernel time does. Paired quick runs, `before`
//!   the eleventh round's end, `after` this step (9 rounds of 1.5 s each; ratios and CPU as in the eleventh round):
//!
//!   | run | HAProxy | before | after |
//!   |---|---|---|---|
//!   | 03:35 | 45.6 / 14.6 µs (5.8 / 1.5) | 1.23× / 1.46× / 0.83×, 52.0 / 19.6 µs (15.0 / 5.3) | 1.24× / 1.41× / 0.92×, 48.8 / 17.1 µs (15.4 / 4.5) |
//!   | 03:42, load average 1.3–1.6 | 38.6 / 14.4 µs (5.3 / 1.4) | 1.14× / 1.24× / 0.90×, 49.9 / 17.7 µs (13.1 / 4.2) | 1.18× / 1.53× / 0.93×, 48.7 / 16.4 µs (13.9 / 3.9) |
//!   | 03:49, 1.3–1.4 | 36.1 / 14.0 µs (5.1 / 1.4) | 1.30× / 1.55× / 0.85×, 48.4 / 17.1 µs (13.9 / 3.8) | 1.10× / 1.19× / 0.88×, 45.3 / 16.3 µs (13.3 / 3.6) |
//!   | 04:44, 1.1–1.6, with the review's changes | 40.2 / 14.8 µs (5.7 / 1.7) | 1.17× / 1.27× / 0.92×, 51.6 / 17.5 µs (14.6 / 4.0) | 1.24× / 1.41× / 0.91×, 44.6 / 17.0 µs (15.7 / 4.0) |
//!
//!   Less CPU per command at 64 clients in all four runs (0.5–2.5 µs, nearly all of it kernel time), and a
//!   higher throughput ratio in three (level in the fourth); at 1 client the two trade places. With `perf stat` (3 s at 64
//!   clients, before and after in separate runs) the relay's `task-clock` per command went from 23.1 to 20.5 µs.
//!   A fourth run (04:01, against the build below) gave the step 1.08× / 1.15× / 0.90× with 43.0 / 16.2 µs
//!   (HAProxy 34.9 / 13.4 µs, of which user 4.3 / 1.5): tenantwall's kernel time per command at 64 clients is
//!   now about HAProxy's (12.4 against 11.9 µs), its user time 3.8 against 1.5 µs. The 64-client goal (≥ 0.95×)
//!   is still not met in these runs (0.88–0.93×); the 1-client goal was met in two of four (1.08×, 1.10×).
//!
//!   Tried and not kept, each paired against the step above: reading every frame into the front of the
//!   connection's buffer once the last frame is dropped (`BytesMut::try_reclaim`), so that each command reuses
//!   the same cache lines instead of walking through the 8 KiB buffer (11 rounds at 64 clients: 0.90× and 16.5
//!   µs against 0.90× and 16.7 µs; in a three-way run 16.8 against 16.3 µs): no difference. The release build
//!   optimised for size (`opt-level = "s"`: 5.7 MB of code against 7.8 MB), for fewer cold instruction-cache
//!   lines at each command: 1.09× / 0.87× with 44.9 / 17.1 µs against 1.08× / 0.90× with 43.0 / 16.2 µs. The
//!   in-flight cap raised so that no command queues (and no gate timer wakes the runtime's driver: 0.12–0.16
//!   `write`s per command at the default cap, none at 64): 19.2 and 21.2 µs per command against 20.6 and 19.4 µs
//!   at the default (`perf stat`, two runs each), no difference, as in the ninth round.
//!
//!   The full comparison on the step's build (`cargo bench --bench load`, 04:10, one run): against the stub
//!   0.86× / 0.74× / 0.90× (HAProxy 134 µs at 1 client, in the machine's slow mode, and 37,554 commands/s at 64;
//!   tenantwall 115 µs and 33,955), against nx-27017 1.04× at 1 client and 0.96× at 64.
//!   `-- many` on the step's build (04:25): 64 backend connections, RSS 118 MiB idle and 123 MiB at peak with
//!   10,000 clients (unchanged: the copies share one 4 KiB buffer per thread), 9,083 commands/s at one find per
//!   client per second (p50 0.35 ms), 30,334 closed loop (24,717 on the eleventh round's build).
//! - **Thirteenth round (2026-11-29, 05:00–06:30): a profile-guided build** (`scripts/build-pgo`). The twelve
//!   rounds above took the proxy's instructions per command down by a third, but its user time at 1 client stayed
//!   two to three times HAProxy's, about three times what the instructions take: the code and data are cold at
//!   every command. A profile tells the compiler which blocks run, so that it inlines along the hot path, lays the
//!   hot code out together and moves the cold branches (errors, rare commands) away. The script builds the proxy
//!   with `-Cprofile-generate`, runs it under the CI load run (`load_ci.rs`: 120 tenants, all three modes,
//!   inserts, finds, updates, deletes, cursors, aggregates, against nx-27017; not this harness's workload), stops
//!   it with SIGTERM (the harness's proxies are now stopped that way, so that its exit path writes the profile),
//!   merges the profile with `llvm-profdata` (Debian's `llvm-19` reads rustc 1.95's LLVM 22 profiles) and builds
//!   again with `-Cprofile-use`. Callgrind, 1 client, whole process per command: 17,846 → 14,793 (−17%: more is
//!   inlined). Paired quick runs (9 rounds of 1.5 s; ratios and CPU as in the eleventh round):
//!
//!   | run | HAProxy | plain release build | PGO build |
//!   |---|---|---|---|
//!   | 05:29, load average 1.3–1.4 | 48.6 / 20.4 µs (7.0 / 2.4) | 1.15× / 1.32× / 0.92×, 57.6 / 21.2 µs (15.9 / 6.4) | 0.94× / 0.86× / 0.94×, 46.5 / 19.7 µs (9.4 / 3.8) ¹ |
//!   | 05:36, 0.8–1.5 | 38.7 / 16.3 µs (6.5 / 2.0) | 1.10× / 1.17× / 0.95×, 45.6 / 16.4 µs (14.1 / 4.0) | 0.98× / 0.95× / 1.01×, 38.1 / 15.5 µs (9.7 / 3.1) |
//!   | 05:49, 0.9–1.7 | 35.7 / 13.9 µs (5.6 / 1.2) | 1.05× / 1.09× / 0.90×, 42.9 / 16.9 µs (13.7 / 4.1) | 0.99× / 0.98× / 0.94×, 35.5 / 15.4 µs (7.7 / 2.8) |
//!   | 05:52, 1.5–2.0 | 40.1 / 14.8 µs (4.9 / 1.5) | 1.07× / 1.13× / 0.90×, 44.1 / 17.8 µs (11.6 / 4.0) | 1.01× / 1.01× / 0.93×, 38.4 / 16.2 µs (8.6 / 3.2) |
//!   | 06:04, 0.8–2.0 | 37.8 / 15.0 µs (5.0 / 1.6) | 1.26× / 1.45× / 0.87×, 44.4 / 18.9 µs (11.4 / 4.3) | 1.07× / 1.13× / 0.95×, 38.5 / 15.8 µs (8.5 / 3.4); a second build from a second training run: 1.04× / 1.07× / 0.94×, 38.0 / 15.7 µs (8.5 / 3.4) |
//!   | 06:23, 0.0–1.6, slow mode | 50.9 / 17.6 µs (5.4 / 2.0) | 1.03× / 1.05× / 1.00×, 52.0 / 19.1 µs (14.8 / 5.5) | 1.01× / 1.01× / 0.97×, 48.4 / 18.5 µs (10.0 / 4.2) (the second build) |
//!   | 06:42, 1.2–2.1, 64 clients only, 15 rounds | 19.0 µs (2.3) | 0.91×, 20.9 µs (5.7); 6 rounds of 15 at ≥ 0.95× | 1.01×, 20.2 µs (4.6) (the script's final build); 11 rounds of 15 at ≥ 0.95× |
//!   | 06:46, 1.6–1.8, 13 rounds, slow mode | 48.6 / 19.6 µs (6.9 / 2.8) | 1.31× / 1.71× / 0.90×, 63.4 / 22.9 µs (17.2 / 6.8) | 1.06× / 1.11× / 0.90×, 53.5 / 21.6 µs (10.7 / 5.4) (the same) |
//!   | 06:56, 1.4–1.9 | 47.6 / 17.2 µs (7.0 / 1.9) | - | 0.96× / 0.90× / 0.99×, 44.8 / 18.4 µs (11.6 / 4.1) (the same); with BOLT 0.92× / 0.83× / 1.05×, 41.7 / 17.4 µs (8.6 / 3.7) |
//!   | 07:00, 1.5–1.7 | 49.7 / 17.8 µs (8.4 / 2.0) | 1.13× / 1.22× / 1.00×, 58.7 / 18.7 µs (14.8 / 4.9) | 0.88× / 0.78× / 1.02×, 40.6 / 18.8 µs (9.7 / 4.0) (the same); with BOLT 0.90× / 0.77× / 1.01×, 42.4 / 18.0 µs (8.4 / 3.9) |
//!   | 07:09, 1.3–2.1 | 44.0 / 18.5 µs (7.2 / 2.4) | 1.35× / 1.85× / 0.94×, 64.1 / 21.9 µs (19.1 / 6.6) | 1.11× / 1.35× / 0.94×, 48.4 / 19.5 µs (9.5 / 4.3) (the same); the script's build with BOLT 0.99× / 0.98× / 0.96×, 46.6 / 20.0 µs (8.5 / 4.7) |
//!
//!   ¹ trained on this harness's quick run as well as the CI load run; in the 05:36 run that build gave 0.93× /
//!   0.87× / 0.98× with 7.0 µs of user time at 1 client, beside the CI-only build's 9.7 µs: training on the
//!   measured workload itself gains a little more at 1 client, so the script trains on the CI run alone and this
//!   harness measures what a profile from other traffic gives.
//!
//!   Over the ten runs of builds trained on the CI run alone (from 05:36), the PGO build met the 1-client goal
//!   (≤ 1.10×) read on the total p50 in eight of the nine that had 1 client (0.88–1.11×), read on the latency
//!   added over direct in six of nine (0.78–1.35×); the plain build in four of eight on the total (1.03–1.35×)
//!   and two of eight on the added (1.05–1.85×). At 64 clients the PGO build used less CPU per command than the
//!   plain one in all but one of the runs that had both (0.6–3.1 µs less; level at 07:00), its throughput ratio
//!   was higher in six of nine and level in two (0.90–1.02× over ten runs, against 0.87–1.00×), and it met the
//!   goal (≥ 0.95×) in six of ten: more often than not, not reliably. With BOLT after it (the last three runs),
//!   both goals were met in all three: 0.90–0.99× at 1 client (added 0.77–0.98×), 0.96–1.05× at 64. Its user
//!   time per command at 64 clients is 2.8–5.4 µs against HAProxy's 1.2–2.8 µs; sampling (`perf record`, 64 clients) puts 79% of the relay's time in the kernel, where HAProxy's
//!   is the same, and the user part mostly in the connection task, now one function. The full comparison
//!   (05:55, one run, both builds): against the stub the plain build 1.41× / 1.76× / 0.81×, the PGO build
//!   1.03× / 1.05× / 0.88× (HAProxy 104 µs at 1 client, 37,299 commands/s at 64); against nx-27017 the plain
//!   build 1.01× at 1 client and 0.94× at 64, the PGO build 0.88× and 1.14× (that backend's own variance rules
//!   there). A second (06:36, the script's final build, load average 1.0–1.4): against the stub the plain build
//!   1.25× / 1.46× / 0.94×, the PGO build 1.05× / 1.10× / 1.02× (HAProxy 105 µs at 1 client, 34,705 commands/s at
//!   64; the PGO build 111 µs and 35,365); against nx-27017 the plain build 1.07× and 1.05×, the PGO build 1.39× and 1.05×. A third, with the script's
//!   PGO + BOLT build (07:17, load average 2.8 at its start, every path slow: HAProxy 156 µs at 1 client with a p99
//!   of 897 µs): the plain build 1.48× / 1.98× / 0.77×, the PGO + BOLT build 1.25× / 1.52× / 0.94×. `-- many` with the PGO build (06:09): 64 backend connections, RSS 117 MiB idle and 122 MiB at peak
//!   with 10,000 clients, 9,085 commands/s at one find per client per second (p50 0.31 ms), 37,347 closed loop
//!   (the plain build 30,334 in the twelfth round).
//!
//!   **BOLT after PGO** (`llvm-bolt` from Debian's `bolt-19`; step 4b of the script): the optimised binary,
//!   linked with `--emit-relocs`, is instrumented by BOLT, trained again under the same CI run, and rewritten
//!   with each function's hot blocks together (`ext-tsp`), hot functions next to each other (`cdsort`) and cold
//!   parts split off. On the training's own counts it takes 42% of the taken branches away and 0.5% of the
//!   instructions. Paired against the PGO build alone (06:56 and 07:00, above): 3.1 µs less CPU per command at 1
//!   client in one run and 1.8 µs more in the other, user time 1.3–3.0 µs less in both; at 64 clients 0.8–1.0
//!   µs less CPU per command in both, the throughput ratio 1.05× against 0.99× and 1.01× against 1.02×; the
//!   script's build with it (07:09) 0.99× / 0.98× / 0.96× against the PGO build's 1.11× / 1.35× / 0.94×. A small
//!   gain, kept since it costs one more training run (about 25 s) and changes no code; skipped with a note where
//!   there is no `llvm-bolt`.
//!
//!   A control: a build whose profile held none of the proxy's functions (the first attempt, whose proxies were
//!   killed, not stopped, and wrote none; only build scripts' profiles were merged) measured as the plain build
//!   (05:29: 1.15× / 1.33× / 0.92×, 56.1 / 21.0 µs), though two earlier runs had it ahead: a reminder that one
//!   paired run does not decide a few percent. The PGO build's lead at 1 client was 4–9 µs of user time per
//!   command in every run.
//! - **Fourteenth round (2026-11-29, 07:40–09:30): the instrument.** The thirteenth round's best results came
//!   from runs whose paths ran in a rotating order, and from full comparisons of one window per cell. Two checks
//!   this morning:
//!
//!   - *The same build twice in one quick run*, 64 clients, 9 rounds, rotating order: 1.00× and 0.92× of
//!     HAProxy's throughput; the second copy always ran right after the first. Run again with a 1.5 s pause
//!     before every cell, both came out at 0.83× and 0.81×. The order biases a path by a few percent, and the
//!     machine moves by more than that between runs.
//!   - *Six full comparisons of the same binaries within about an hour*, PGO + BOLT build, against the stub:
//!     1.15× / 1.33× / 1.00× (07:41, one window per cell), 0.96× / 0.91× / 0.82× (07:45, 5 rounds, rotating),
//!     then the four balanced runs in the table below, from 0.96× / 0.92× / 0.99× to 1.27× / 1.54× / 0.92×.
//!
//!   So both modes now measure in whole cycles of rounds in a balanced order ([`round_order`], a Williams design;
//!   the runs below used 5 rounds with four paths, one cycle and one round more, before the count was rounded
//!   to whole cycles), print each
//!   ratio as the median of the rounds' ratios with the middle half in brackets, and the quick mode prints per
//!   cell the load generator's own CPU time per command and the machine's idle and stolen share. What those show:
//!
//!   - The load generator's CPU per command moves with the machine, 30–52 µs for the same path within one run,
//!     and the relay's with it. Rounds where everything is slow are where the ratios stray.
//!   - The hypervisor steals in bursts, and mostly when the machine is half idle: at 1 client in the 08:55 run
//!     below, up to 25% of a cell's CPU, and the three rounds where tenantwall's cell lost 13–25% gave its
//!     three worst 1-client ratios of that run (1.20–1.38×). At 64 clients, with both vCPUs busy, it stole at
//!     most 4%, and the rounds' throughput ratios still ranged 0.72–1.37×.
//!   - The machine is idle 2% of the time on the direct path, 7–12% through HAProxy and 11–14% through
//!     tenantwall at 64 clients: the relays' extra hops leave moments when every command is in flight between
//!     processes.
//!   - `perf stat` at 64 clients: both relays make exactly two `recvfrom` and two `sendto` per command and about
//!     0.4 `epoll_wait`. tenantwall also makes 0.12 `write` per command: eventfd wake-ups between its two
//!     workers, when the in-flight gate hands a slot to a command queued on the other worker. With the cap at 64
//!     (nobody queues) they vanish and `epoll_wait` drops to 0.25 per command; one such run gave 15.9 against
//!     16.4 µs of CPU per command and 1.01×, but a 7-round paired run in the ninth round found no difference in
//!     the ratio (0.88× against 0.87×), and the cap stays: it is the fairness the issue asks for.
//!   - One worker instead of two (paired, 8 rounds): 0.90× (0.87–0.95) at 64 clients against 0.97× (0.95–1.02).
//!
//!   The PGO + BOLT build in the balanced runs (quick mode, 8–10 rounds of 1.5 s; full comparison, 5 rounds):
//!
//!   | run | p50 / HAProxy's, 1 client | added / HAProxy's | throughput / HAProxy's, 64 | relay CPU per command at 64, tenantwall / HAProxy (user) |
//!   |---|---|---|---|---|
//!   | 08:04, quick, 3 builds | 0.98× (0.90–1.12); a second copy 0.93× | 0.96×; 0.87× | 0.91× (0.85–0.98); 0.88× (0.84–0.93) | 17.6 (4.0) / 15.7 (1.5) µs |
//!   | 08:08, quick, 64 clients only | - | - | 1.00× (0.94–1.04) | 17.5 (3.6) / 16.7 (2.2) µs |
//!   | 08:10–08:16, four runs, 64 clients only, one or three copies | - | - | 0.96×, 1.03×; 0.94–1.02× and 0.94–0.95× | 16.2–17.6 / 15.4–17.0 µs |
//!   | 08:17, quick, 2 builds | 1.08× (1.02–1.15) | 1.16× | 0.97× (0.95–1.02) | 15.9 (3.2) / 15.0 (1.4) µs |
//!   | 08:21, full | 1.27× (1.11–1.28) | 1.54× | 0.92× (0.87–0.92) | 15.8 / 13.5 µs |
//!   | 08:26, full | 1.07× (0.86–1.16) | 1.18× | 0.99× (0.88–1.06) | 17.8 / 19.0 µs |
//!   | 08:35, full, beside a compile | 1.06× (0.86–1.07) | 1.10× | 0.91× (0.86–1.01) | 23.0 / 22.1 µs |
//!   | 08:47, full, one whole cycle (the table at the top) | 0.96× (0.90–0.99) | 0.92× | 0.99× (0.95–1.00) | 18.4 / 16.3 µs |
//!   | 08:52, quick, 64 clients only, the machine slow (load generator 35–75 µs per command, 1–3% stolen) | - | - | 0.92× (0.83–1.01); with the cap at 64 (`#64`), 0.84× (0.79–0.96) | 22.3 (6.1) / 19.1 (2.9) µs |
//!   | 08:55, quick, 18 rounds (three cycles), the PGO build alone | 1.04× (0.90–1.17) | 1.07× (0.81–1.34) | 0.99× (0.93–1.11); the rounds' own ratios 0.72–1.37×, 10 of 18 at ≥ 0.95× | 21.1 (5.1) / 18.7 (2.3) µs |
//!
//!   The plain release build, in the same runs where it ran: 1.04× / 1.06× / 0.86× (08:04), 1.39× / 1.74× / 0.79×
//!   (08:21), 1.09× / 1.20× / 0.88× (08:26), 1.11× / 1.19× / 0.92× (08:35), 1.22× / 1.51× / 0.93× (08:47).
//!
//!   Where that leaves issue 10's goals: at 1 client the PGO build is at HAProxy's latency within the noise
//!   (0.93–1.27×, seven of eight readings within 1.10×; the latency it adds over direct 0.87–1.54× of
//!   HAProxy's, median 1.09×); at 64 clients it is at 0.88–1.03× (median of the eighteen readings 0.955×), the
//!   plain build at 1.04–1.39× and 0.79–0.93×. Both medians sit on the goals' lines, and one round's ratio
//!   strays by ±20% (the 08:55 run). Raising the cap to 64 in a paired
//!   run did not help (the last row), as in the ninth round. The relay's CPU per command at 64 clients is about 1 µs
//!   above HAProxy's, all of it user time (3.2–4.0 against 1.4–2.2 µs); the kernel's share is level. Parity
//!   within the machine's noise, not yet a margin over it.
//! - **Fifteenth round (2026-11-29, 09:15–11:20): enough rounds to decide, and the gate's hand-offs.** The
//!   fourteenth round left the goals "on the line"; this one asks the instrument to say how sure it is.
//!
//!   - *A confidence interval per ratio.* Each ratio now also carries the distribution-free 95% confidence
//!     interval of its median ([`median_interval`]: the k-th smallest and k-th largest of n rounds, k from the
//!     binomial distribution; 6 rounds at least), and the run ends with a verdict per goal: met when the interval
//!     lies wholly on the goal's side, missed when wholly on the other, else undecided ([`goal_verdict`]). The
//!     interval assumes independent rounds; each ratio is taken within its round, which cancels drift over
//!     minutes but not bursts within a round, so it is a floor on the uncertainty.
//!   - *The stub in its own process* (`stub_process`, as the `-- many` mode already ran it). In the load generator's
//!     process it shared the driver's two-thread work-stealing runtime, and the direct path's throughput at 64 clients
//!     swung from 27,000 to 59,000 commands/s between rounds. In its own process the throughputs are higher for every
//!     path (HAProxy about 36,000 against 26,000 at 64 clients) and the rounds' ratios a little tighter (middle half
//!     0.89–1.03 against 0.88–1.07 at 64 clients, 0.91–1.01 against 0.93–1.10 at 1).
//!   - *Rounds needed.* At 64 clients one round's throughput ratio strays by ±10–15% and the rounds' ratios
//!     hardly correlate with each other (0.31 between HAProxy's and tenantwall's cells of a round in the
//!     32-round run), so the interval narrows only as one over the square root of the rounds: ±0.07 at 24
//!     rounds, ±0.02 at 180. Narrow is not the same as settled: the machine's state changes over an hour, and
//!     with it the ratio (below).
//!
//!   The PGO + BOLT build of the fourteenth round (same proxy source as the round's start), against the stub:
//!
//!   | run | p50 / HAProxy's, 1 client | added / HAProxy's | throughput / HAProxy's, 64 | relay CPU per command at 64, tenantwall / HAProxy (user) |
//!   |---|---|---|---|---|
//!   | 09:20, quick, 32 rounds, stub in process, beside the plain build | 1.00× (0.93–1.10; CI 0.95–1.06): met | 1.00× (CI 0.90–1.12): undecided | 0.97× (0.88–1.07; CI 0.89–1.07): undecided | 20.3 (4.6) / 19.6 (2.5) µs |
//!   | 09:38, quick, 24 rounds, stub in its own process | 0.96× (0.91–1.01; CI 0.91–1.01): met | 0.92× (CI 0.82–1.01): met | 0.97× (0.89–1.03; CI 0.89–1.03): undecided | 16.8 (3.2) / 15.3 (1.6) µs |
//!   | 09:46, quick, 180 rounds (30 cycles), 64 clients only, stub in its own process | - | - | **0.97× (0.89–1.03; CI 0.96–0.99): met**; without the last 6 rounds, which overlapped a compile, 0.973× (CI 0.956–0.988); after 125 rounds it stood at 0.959× (CI 0.934–0.981) | 16.7 (3.4) / 15.3 (1.6) µs |
//!   | 11:02, quick, 120 rounds (20 cycles), 64 clients only, stub in its own process, the machine faster (HAProxy 40,250 commands/s, 14.0 µs per command) | - | - | **0.91× (0.87–0.97; CI 0.90–0.94): missed** | 16.0 (3.0) / 14.0 (1.3) µs |
//!   | 10:32, quick, 72 rounds (18 cycles), stub in its own process, the machine slower (HAProxy 18.4 µs per command at 64, up to 4% stolen) | **0.99× (0.93–1.03; CI 0.97–1.02): met** | **0.98× (CI 0.93–1.04): met** | 1.01× (0.87–1.13; CI 0.94–1.08): undecided | 19.7 (4.3) / 18.4 (2.1) µs |
//!
//!   The plain release build at 09:20: 1.23× (CI 1.13–1.30) missed, 1.46× (CI 1.24–1.61) missed, 0.97× (CI
//!   0.89–1.09) undecided. With the cap at 64 instead of 32 (09:35, 8 rounds, in process) the PGO build's user
//!   time per command at 64 clients was the same (4.3 against 4.1 µs): the gate's queue is not where the user
//!   time goes. A user-mode profile at 64 clients (`perf record -e cycles:u`, plain build) is flat: the proxy's
//!   own parse, checks, rewrite and relay about 45%, tokio's I/O, wakers and scheduling about 16%, the syscall
//!   wrappers 6%, clock reads 5%, copies 4%. The kernel's time per command is level with HAProxy's (13.3–13.6 against
//!   13.7 µs); the relay's 1.4–1.5 µs more per command is user time (3.2–3.4 against 1.6 µs). The machine also sat idle 8% of the time through
//!   tenantwall against 6% through HAProxy at 64 clients, with 0.13 against 0.08 voluntary context switches per
//!   command: moments when a worker sleeps with commands still queued at the gate.
//!
//!   *Tried and not kept: the gate's hand-offs on the freeing worker.* A command leaving the tenant's gate hands
//!   its slot to the first command queued, on whichever worker it waits: half the time the other one, woken
//!   through its eventfd (0.09–0.11 `write`s per command at 64 clients) while the freeing worker, its own
//!   clients' commands still queued, may go to sleep. The change gave the slot to an early command queued on the
//!   freeing worker when there was one, the first passed over at most twice in a row (the rule the pool has for
//!   its connections). `perf stat` at 64 clients, two runs each: eventfd `write`s 0.088–0.108 → 0.056–0.072 per
//!   command, `epoll_wait` 0.29–0.30 → 0.25–0.26, but context switches 0.31 → 0.36–0.44. Paired quick run, plain
//!   builds, 64 clients, 24 rounds (10:07): before 0.87× (CI 0.80–0.92), after 0.91× (CI 0.85–0.95); after over
//!   before 1.08× (CI 0.94–1.19), relay CPU per command 18.2 → 17.1 µs. The PGO + BOLT build of it, beside the
//!   one without it in the 72-round run above: 0.99× (CI 0.97–1.02), 0.99× (CI 0.93–1.04) and 0.98× (CI
//!   0.91–1.01); after over before 0.97× (CI 0.95–1.02) in throughput and 1.01× (CI 0.98–1.06) in CPU per
//!   command. No gain shown in either build, so the gate keeps its strict arrival order.
//!
//!   Where that leaves issue 10's goals, for the production build (PGO + BOLT) against the stub. The latency
//!   goal is met with 95% confidence read as total p50, in all three runs that measured it (0.96–1.00×;
//!   intervals within 0.91–1.06), and read as the latency added over direct in the two with the stub in its own
//!   process (0.92× and 0.98×; intervals within 0.82–1.04; undecided in the 32-round run with the stub in
//!   process, 1.00×, CI 0.90–1.12). The throughput goal is not: the two longest runs, an hour apart, gave 0.97×
//!   (CI 0.96–0.99, met) and 0.91× (CI 0.90–0.94, missed). Their intervals do not overlap, so the machine's state
//!   moves the ratio by more than any one run's interval says, and what moves it is plain in the CPU columns:
//!   tenantwall's extra CPU per command is user time of a nearly fixed size (1.4–2.0 µs), and its weight grows as
//!   the rest gets cheaper. Over the runs, the ratio followed HAProxy's CPU per command: 14.0 µs (the machine
//!   fast) 0.91×, 15.3 µs 0.97×, 18.4 µs 1.01×. To meet ≥ 0.95× in the fast state the relay's CPU per command
//!   has to come within about 5% of HAProxy's, about 1.3 µs less than now: nearly half of its user time, where
//!   the flat profile above offers no single large part. The plain release build misses the latency goal
//!   (1.23×) and is undecided on throughput.
//! - **Sixteenth round (2026-11-29, 11:30–13:00): what the in-flight cap costs, and cheaper waits at it.** Quick
//!   runs at 64 clients only, the machine in its fast state throughout (HAProxy 13.5–14.6 µs of CPU per command).
//!
//!   - *The cap, paired* (PGO + BOLT build, 24 rounds, 11:50). Cap 32, this harness's setting and the default,
//!     against 64, where nobody queues: relay CPU per command 16.0 against 14.9 µs (user 2.9 against 2.5); cap 32
//!     cost more in 19 of the 24 rounds (median +0.75 µs, +0.55 µs user), and the load generator paid 24.7
//!     against 24.0 µs per command. Throughput 0.90× (CI 0.86–1.00) against 0.92× (CI 0.88–0.97). Half the
//!     commands wait at 64 clients, so one wait costs the relay about 1.5 µs, more than its instructions do
//!     (callgrind: 2,066 instructions a wait). Waking the command on the other worker is the likely rest: 0.136
//!     eventfd `write`s per command against 0.006 at cap 64 (`perf stat`). The cap stays: it is the fairness the issue
//!     asks for.
//!   - *One worker against two* (PGO + BOLT, 24 rounds, 12:00): 0.91× (CI 0.87–0.97) and 0.91× (CI 0.88–0.95),
//!     15.6 and 15.7 µs per command.
//!   - *tokio's `event_interval`* (task polls between looks at the I/O driver; plain build, 30 rounds, 12:10): 4
//!     gave 0.85× (CI 0.80–0.91), 61 (tokio's default, kept) 0.89× (CI 0.85–0.92), 250 gave 0.86× (CI 0.80–0.90).
//!   - *Idle.* In every one of these runs the machine sat idle 7.7–8.7% of the time through tenantwall, against
//!     5.1–5.2% through HAProxy and 2.7–3.1% direct, whatever the cap, the number of workers or the event interval:
//!     a third of the throughput gap, and none of these knobs moves it.
//!   - *Changed: a wait at the cap costs fewer instructions.* It used to register a timer with tokio's wheel and
//!     remove it again, and to enable the gate's `Notify` (its lock, twice). Now it is timed on a second timer
//!     the connection keeps and re-arms lazily (the backend deadline's mechanism, moved to `src/timer.rs` for
//!     both), and a queued command listens on the `Notify` only once it has seen the tenant held. For that, a
//!     hold now ends at its deadline by its own timer (a task `Gate::hold` spawns), not only when someone looks.
//!     Callgrind, 64 clients, where every command waits (cap 64, where none does: 16,112 instructions per
//!     command in all): 18,178 → 17,682 (the timer) → 17,424 (the `Notify`) per command, 2,066 → 1,312 per wait;
//!     clock reads 7.3 → 6.3 per command. The load harness cannot resolve the change: paired plain builds, 36
//!     rounds (12:25), after over before 1.007× in throughput (higher in 18 of 36 rounds), −0.15 µs of relay
//!     CPU per command (lower in 19 of 36). Paired PGO + BOLT builds, 48 rounds (12:40): relay CPU per command
//!     15.8 → 15.4 µs, lower in 39 of the 48 rounds (median −0.20 µs); throughput over HAProxy's 0.92× (CI
//!     0.90–0.95) → 0.93× (CI 0.90–0.96), after over before 1.010× (higher in 29 of 48). Kept for the CPU.
//!   - *The cap with one worker* (PGO + BOLT with the change, 24 rounds, 12:50): cap 32 against 64 cost the relay
//!     nothing more (median 0.0 µs per command, more in 11 of 24 rounds) and the load generator less (lower in 20
//!     of 24); throughput 0.94× (CI 0.90–0.97) against 0.93× (CI 0.87–0.96). So with two workers, what the cap
//!     costs is the hand-off of a slot to a command waiting on the other worker.
//!   - *Tried and not kept: deferring those wake-ups.* A command waiting at the gate was polled with a waker that,
//!     woken from the other worker, left the wake-up in its own worker's list while that worker was busy (run
//!     before it next slept, through tokio's `on_thread_park`, and at each command it started), and woke it at
//!     once only when it slept. `perf stat` at 64 clients: eventfd `write`s from 0.136 per command to 6 in 3 s.
//!     Paired plain builds, 36 rounds (13:03): after over before 0.986× in throughput (higher in 15 of 36), relay
//!     CPU per command +0.3 µs (higher in 22 of 36), idle 8.7% against 8.1%. The system call was not the cost;
//!     nor, in the fifteenth round, was which worker the slot went to. What is left is the time the slot spends
//!     handed on but not yet used, and the traffic between the two cores, which this harness cannot take apart.
//!
//!   The deciding run on the round's end build (PGO + BOLT, `TW_LOAD_ROUNDS=72 ... -- quick`, 13:10, machine fast:
//!   HAProxy 133 µs at 1 client, 41,098 commands/s and 13.8 µs per command at 64): p50 at 1 client 1.00× (0.95–1.05;
//!   CI 0.97–1.02): met; added 1.00× (CI 0.94–1.06): met; throughput at 64 0.96× (0.90–1.01; CI 0.92–0.98):
//!   undecided. The fifteenth round's build missed in a fast state (0.91×, CI 0.90–0.94), but paired against it
//!   this build gave 1.010× (above): most of the difference between those two runs is the machine's. Relay CPU
//!   per command at 64: 15.4 (user 2.8) against HAProxy's 13.8 (1.3) µs.
//! - **Seventeenth round (2026-11-29, 14:00–16:00): one of the two workers was doing all the work.** The
//!   sixteenth round left a third of the throughput gap in idle time that no knob moved.
//!
//!   - *Tried and not kept: yielding before a worker sleeps* (tokio's `on_thread_park` calling `sched_yield`, so
//!     that a worker with nothing to do lets the other threads of its core run before it blocks in `epoll_wait`).
//!     Same plain binary with and without it, 32 paired rounds at 64 clients: 0.991× in throughput (higher in 15
//!     of 32), relay CPU per command −0.1 µs.
//!   - *Where the idle time was.* Counters per process over a 6-round run at 64 clients (voluntary context
//!     switches per command): through tenantwall the generator 0.119, the stub 0.212, the relay 0.109; through
//!     HAProxy 0.089, 0.254 and 0.061; the machine idle 9.2% against 5.4%. Then per thread, 3 s in the middle of
//!     three runs: **one of tenantwall's two workers used 174–183 ticks of CPU and the other none at all, not one
//!     context switch.** Every application connection was on one worker. (HAProxy, at its defaults, was lopsided
//!     too: 164 ticks on one thread, 17 on the other.)
//!   - *Why.* A new connection went to the worker serving the fewest connections. Each load-generator client,
//!     like any driver client, opens a monitoring connection (which only ever sends `hello`, answered by the
//!     proxy) and then its application connection; with two workers the two kinds alternated, so the monitoring
//!     connections all went to one worker and the application connections all to the other. An app that keeps
//!     one client per tenant does the same. So every comparison of one worker against two since the per-core
//!     runtimes (the sixteenth round's 0.91× and 0.91×, its "cap with one worker") compared one busy worker with
//!     one busy worker.
//!   - *Random placement, measured first* (same plain binary, placement by an environment variable, 32 paired
//!     rounds at 64 clients): throughput 1.072× (higher in 23 of 32 rounds); relay CPU per command +1.2 µs (two
//!     cores now share the relay's data, and slots at the in-flight cap are handed between workers), the load
//!     generator's −1.05 µs; idle 8.0% → 3.5% (HAProxy 5.0%, direct 3.0%).
//!   - *Changed* (`src/workers.rs`): a new connection goes to a worker with the fewest *working* connections, those
//!     that have carried a forwarded command, and among equals to one drawn at random. Monitoring connections never
//!     count. Random, not a rotation, because any fixed rotation can fall into step with a client's own pattern
//!     of connections as the old rule did; with nothing working yet (a burst at start-up) placement is random and
//!     even on average, and each connection that starts working steers the next. `/metrics` shows
//!     `tenantwall_worker_working_connections{worker}`. Tests: `workers::tests` (a monitoring-then-application
//!     pattern of 64 clients ends within one connection of even; connections arriving before any works are
//!     spread, every other one too) and `tests/pool.rs`'s
//!     `application_connections_are_spread_over_the_workers_whatever_the_monitoring_connections` (16 official
//!     Rust driver clients through a proxy with two workers: 8 and 8 within 2; with a fixed rotation in
//!     `pick`, 0 and 16).
//!
//!   - *The production builds, paired* (PGO + BOLT of each; 19 rounds of a 48-round run stopped at 15:20, the
//!     machine slower, HAProxy 15.1 µs of CPU per command at 64): after over before 0.998× in throughput (higher
//!     in 9 of 19); relay CPU per command 16.8 → 20.3 µs (higher in 16 of 19); idle 8% → 3%; the relay's
//!     voluntary context switches per command 0.11 → 0.18–0.38. Again at 64 clients only (16 rounds, 15:22):
//!     after over before 1.009×, relay CPU +1.7 µs. Two half-busy workers each sleep and are woken more often
//!     than one busy one did: spread over both cores, the relay turns the machine's idle time into its own CPU
//!     time. On this machine, shared with the load generator and the stub, the relay at 64 clients needs about
//!     0.6 of a core, which one worker gave as cheaply; where the proxy needs more than one core, the old
//!     placement capped it at one. Kept for that.
//!   - *The in-flight cap, now that the work is spread* (same 16 rounds): cap 32 against 64, 1.003× in
//!     throughput, relay CPU −0.15 µs. Cap 32 hands half its slots to a command on the other worker (0.29 eventfd
//!     `write`s per command, against none at cap 64), but it also sleeps less: 0.33 `epoll_wait`s and 0.27
//!     context switches per command against 0.68 and 0.48 at cap 64 (`perf stat`, one round each). The
//!     sixteenth round's "the cap costs 0.75 µs with two workers and nothing with one" was measured on the
//!     lopsided placement.
//!
//!   The deciding run on the round's end build (PGO + BOLT, `TW_LOAD_ROUNDS=36 ... -- quick`, 15:28–15:42, the
//!   machine fast: HAProxy 136 µs at 1 client, 41,117 commands/s and 13.7 µs per command at 64): p50 at 1 client
//!   0.99× (0.95–1.03; CI 0.97–1.02): met; added 0.98× (CI 0.92–1.06): met; throughput at 64 0.98× (0.94–1.02;
//!   CI 0.95–1.00): undecided, the interval's lower end on the line. Relay CPU per command at 64: 16.7 (user 3.2)
//!   against HAProxy's 13.7 (1.4) µs; the machine idle 3% of the time (middle half 3–4%) against 5% (4–6%) through HAProxy and 3% direct.
//!   At 64 clients alone, 144 rounds (15:46–16:13, HAProxy 40,000 commands/s and 14.0 µs per command): 0.96×
//!   (0.90–1.02; CI 0.95–0.98): **met**, the interval's lower end at 0.952. Relay CPU per command 17.1 (user 3.6)
//!   against 14.0 (1.4) µs. The sixteenth round's 72 rounds had the same median (CI 0.92–0.98): the verdict
//!   comes from the rounds, not from this round's change, which paired against the build before it is level in
//!   throughput. The margin is about one point, so a run in another state of the machine can read undecided (a
//!   48-round run stopped after 19 rounds at 15:20, the machine slower, stood at 0.92×, CI 0.87–1.02).
//! - Runtime shape, before the change (`TW_PROXY_WORKERS`, three 7–9-round quick runs): one worker used less CPU per command at 64
//!   clients in all three (19.9 vs 23.5, 25.7 vs 28.5, 20.1 vs 23.9 µs) and gave a higher throughput ratio in all
//!   three (1.19× vs 0.96×, 0.96× vs 0.85×, 1.03× vs 0.93×): no wake-ups between workers, on a machine where the
//!   load generator and the stub want the other core anyway. At 1 client it landed in the slow mode more often
//!   (p50 medians 226 vs 69, 165 vs 87, 64 vs 73 µs). The default stays one worker per core: one worker caps the
//!   proxy at one core wherever it has more, and this box cannot say what a dedicated proxy host would see. A
//!   proxy sharing a small machine with its clients can set `TOKIO_WORKER_THREADS=1`. A fourth run, on the final
//!   code of 2026-11-28 with the machine otherwise quiet (01:23, load average 1.4–1.7, 9 rounds of 1.5 s, every
//!   path in the slow mode that night: HAProxy 193 µs at 1 client): two workers 1.37× at 1 client and 0.92× at
//!   64; one worker 1.31× and 1.02× (22.0 against 31.1 µs of CPU per command at 64, HAProxy 18.5).
//!
//! nx-27017 (single-threaded Python) bounds its rows, so there the differences between paths are noise (and the in-flight
//! cap shows as a low p50 with a long p99 at 64 clients). A first version of this harness had the direct and
//! HAProxy clients send a flat `{tenantId, k}` filter; nx-27017 runs that about 3× faster than the `$and` the
//! proxy forwards, which was then counted against the proxy.
//!
//! ## Quick A/B (`cargo bench --bench load -- quick`)
//!
//! The fast stub only, direct, HAProxy and one or more tenantwall builds side by side, at 1 and 64 clients, in
//! rounds in the comparison's balanced order; per cell the relay's CPU time (and its user-mode part) and context
//! switches per command, the load generator's own CPU time per command (the driver clients; the stub runs in its
//! own process), and the share of the machine's CPU left idle or stolen by the hypervisor; at the end, per path,
//! the median over rounds of each round's ratios to that round's HAProxy cell, with the middle half and the
//! median's 95% confidence interval in brackets, and issue 10's goals judged by those intervals (a goal's verdict
//! needs its client count: 1 first, 64 last).
//! Environment:
//! `TW_LOAD_ROUNDS` (default the fewest whole cycles of the balanced order that make 4 rounds or more; rounded
//! up to whole cycles), `TW_LOAD_SECS` (window per cell, default 3), `TW_QUICK_CLIENTS` (e.g. `1`),
//! `TW_QUICK_MAX_IN_FLIGHT` (the tenant's cap), `TW_PROXY_VARIANTS="label=path[@workers][#cap];..."` (an empty
//! path is this build; `#cap` that variant's in-flight cap). Copy a build aside (`cp target/release/tenantwall target/ab/x`) before changing the code, then
//! compare both in one run: the machine's state changes within minutes, so only paired rounds compare. E.g.
//! `TW_LOAD_ROUNDS=8 TW_LOAD_SECS=1.5 TW_PROXY_VARIANTS="old=target/ab/x;new=" cargo bench --bench load -- quick`
//! (about 3 min). With two builds (four paths) the balanced order repeats every 4 rounds, with one or three
//! every 6 or 10 (a path count that is odd needs each row reversed as well).
//!
//! ## Raw clients (`cargo bench --bench load -- raw`)
//!
//! The proxy's own cost without a driver's: raw OP_MSG clients send `find` round trips to the fast stub directly
//! and through in-process proxies (no authentication): one connection (latency) and 32 (throughput). About 20 s.
//!
//! Results (2026-11-26, 2-core x86_64 VM; client, proxy and stub share the 2 cores):
//!
//! | path                                   | connections | throughput    | p50    | p99    |
//! |----------------------------------------|-------------|---------------|--------|--------|
//! | direct to the stub                     | 1           | 65,600 cmd/s  | 13 µs  | 19 µs  |
//! | through tenantwall, own backend        | 1           | 30,400 cmd/s  | 29 µs  | 50 µs  |
//! | through tenantwall, field mode rewrite | 1           | 30,200 cmd/s  | 31 µs  | 55 µs  |
//! | direct to the stub                     | 32          | 132,400 cmd/s | 235 µs | 440 µs |
//! | through tenantwall, own backend        | 32          | 63,600 cmd/s  | 496 µs | 681 µs |
//! | through tenantwall, field mode rewrite | 32          | 59,800 cmd/s  | 525 µs | 891 µs |
//!
//! Unloaded, the proxy adds about 16-18 µs per command, most of it the second loopback hop; the field-mode
//! rewrite itself costs about 2 µs. Saturated, throughput halves because the proxy does as much socket work as
//! the stub and they share the same two cores.
//!
//! ## Many clients (`cargo bench --bench load -- many`)
//!
//! 10,000 raw clients of 100 tenants (field mode, one SCRAM user each, verifiers at the lowest iteration count
//! the policy accepts) connect to one tenantwall process and authenticate (the proxy's own SCRAM client code, 64 at
//! a time), then: each sends one find, all at once; each sends a find a second for 10 s; all send back to back for
//! 5 s. Reported per phase: commands/s, p50/p99, backend connections used (the proxy's
//! `tenantwall_backend_connections` gauge from its admin listener, "n/a" while the proxy has none, and established
//! TCP connections to the backend port from /proc/net/tcp as a cross-check) and the proxy's RSS. The fast stub runs
//! as its own process (this binary in `stub-server` mode) so its sockets do not count against this process's
//! open-file limit; the limit is raised with `rlimit` (to the hard limit, or further as root where the kernel
//! allows), and the clients are capped to fit under it. About 30 s.
//!
//! Latest run (2026-11-28 08:10, after the gate wakes one waiter per freed slot; load average 1.3): proxy RSS 9
//! MiB before the clients came.
//!
//! | phase                                | commands/s | p50       | p99       | backend conns (gauge / TCP) | proxy RSS |
//! |--------------------------------------|------------|-----------|-----------|-----------------------------|-----------|
//! | connected, idle                      | -          | -         | -         | 1 / 1                       | 129 MiB   |
//! | first find of every client, at once  | -          | 204 ms    | 333 ms    | 64 / 64                     | 134 MiB   |
//! | 1 find/s per client                  | 9,084      | 0.48 ms   | 3.20 ms   | 64 / 64                     | 134 MiB   |
//! | closed loop                          | 28,903     | 331 ms    | 956 ms    | 64 / 64                     | 135 MiB   |
//!
//! Before that change (the same session, alternating builds): closed loop 12,269–13,177 commands/s, p50
//! 683–714 ms, p99 1.94–1.96 s; the rest within noise. The run of 2026-11-27 (before the in-flight cap):
//! closed loop 21,503 commands/s, p99 642 ms.
//!
//! Issue 10's goal: ≤ 64 backend connections and ≤ 200 MiB for 10,000 clients; met, with the RSS (about 13 KiB per
//! idle client connection) the closer of the two. The one idle backend connection is the admin listener's health
//! check. Before the pool, 9,744 clients (all this machine's 20,000 open files allowed with a backend connection
//! each) held 9,744 backend connections and 168 MiB.
//!
//! ## Noisy neighbour (`cargo bench --bench load -- noisy`)
//!
//! A *busy stub backend* models a server with [`BACKEND_WORKERS`] workers: every command takes one (FIFO), an `aggregate` holds it for [`HEAVY`], a `find`
//! releases it at once. Tenant B runs [`B_CLIENTS`] clients of light finds, alone and then while tenant A floods
//! with [`A_CLIENTS`] clients of heavy aggregates, first without a rate limit and then with
//! `rate_limit = { commands_per_second = A_RATE, burst = A_BURST }`. A's clients back off as the client
//! backpressure spec says (100 ms × 2^attempt × jitter, at most 5 retries) on `IngressRequestRateLimitExceeded`.
//! Goal: B's p99 during the flood at most 2× B's p99 alone.
//!
//! Results (2026-11-27, 2-core x86_64 VM shared with other work; clients, proxy and stub share the cores; two runs
//! agreed within 15%):
//!
//! | scenario               | B p50    | B p99    | A admitted  | A refused   |
//! |------------------------|----------|----------|-------------|-------------|
//! | B alone                | 115 µs   | 263 µs   | —           | —           |
//! | A floods, no limit     | 48.4 ms  | 53.1 ms  | 1,244 cmd/s | 0           |
//! | A floods, rate limited | 168 µs   | 433 µs   | 377 cmd/s   | 407 cmd/s   |
//!
//! Without a limit A keeps the busy backend's 4 workers saturated (1,244 of its 2,000 aggregates per second, the
//! rest lost to queueing) and B's finds wait behind A's queue: 200× worse. With A limited to 500 per second, B's
//! p99 during the flood is 1.6× its p99 alone (goal: ≤ 2×); A's backoff keeps it a little under its limit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::rawdoc;
use mongodb::bson::{doc, Document};
use tenantwall::auth::{ScramClient, ScramVerifier, DEFAULT_ITERATIONS, MIN_ITERATIONS};
use tenantwall::codec::FrameReader;
use tenantwall::{Policy, Server};
use tenantwall_protocol::{decode, Message, MsgFlags, OpMsg};
use tokio::io::AsyncWriteExt;

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;
mod stub;

use harness::{Haproxy, Latencies, ProxyProcess, Scratch};

// ---------------------------------------------------------------------------------------------------------------
// The comparison: direct, HAProxy, tenantwall; official driver clients.

/// Concurrent driver clients of the comparison.
const COMPARE_CLIENTS: [usize; 3] = [1, 16, 64];
/// Commands run before the measured window (connection pools filled, caches and branch predictors warm).
const WARMUP: Duration = Duration::from_millis(500);
/// The measured window of one cell.
const MEASURE: Duration = Duration::from_secs(3);
/// Documents the finds pick from (seeded into nx-27017; the stub answers any filter with one document).
const KEYS: i32 = 100;
/// A throwaway user of a proxy that lives for one run on loopback: nothing to protect.
const BENCH_USER: &str = "bench";
const BENCH_PASSWORD: &str = "load-bench-password";

/// Throughput and latencies of one cell.
struct Cell {
    throughput: f64,
    latencies: Latencies,
    /// CPU time the watched process spent in the measured window, all its threads, user and system.
    cpu: Option<Duration>,
    /// The part of `cpu` spent in user mode (the relay's own code; the rest is the kernel's, its syscalls).
    user: Option<Duration>,
    /// Context switches of the watched process in the window: (voluntary, involuntary).
    switches: (u64, u64),
    /// The measured window.
    window: Duration,
    /// CPU time of this process (the load generator's clients; the stub runs in its own process) in the window.
    own_cpu: Duration,
    /// The share of the machine's CPU time in the window that was idle, and that the hypervisor stole.
    idle: f64,
    steal: f64,
}

impl Cell {
    /// Commands answered in the window.
    fn commands(&self) -> f64 {
        self.throughput * self.window.as_secs_f64()
    }

    /// `total` per command of the window, in µs (`None` when the window saw no command).
    fn per_command_us(&self, total: Duration) -> Option<f64> {
        let commands = self.commands();
        (commands > 0.0).then(|| total.as_secs_f64() * 1e6 / commands)
    }

    /// The watched process's CPU time per command of the window, in µs.
    fn cpu_per_command_us(&self) -> Option<f64> {
        self.per_command_us(self.cpu?)
    }

    /// The user-mode part of [`Cell::cpu_per_command_us`], in µs.
    fn user_per_command_us(&self) -> Option<f64> {
        self.per_command_us(self.user?)
    }

    /// This process's CPU time per command of the window, in µs (the load generator's own share).
    fn own_cpu_per_command_us(&self) -> Option<f64> {
        self.per_command_us(self.own_cpu)
    }

    /// The watched process's context switches per command of the window: (voluntary, involuntary).
    fn switches_per_command(&self) -> (f64, f64) {
        let commands = self.commands().max(1.0);
        (self.switches.0 as f64 / commands, self.switches.1 as f64 / commands)
    }
}

/// `clients` driver clients (each its own `mongodb::Client` with one pooled connection, as that many
/// single-threaded app processes would be) send `find_one` by key back to back; every find must find its
/// document. With `own_filter` the clients scope the filter to their tenant themselves, as an app behind a plain
/// relay has to, in exactly the shape tenantwall forwards (`tenantwall explain` shows it), so the backend does the
/// same work on every path; through tenantwall they leave that to the proxy. Returns what the measured window saw,
/// with the CPU time process `watch` (the relay in the path) spent in it.
async fn driver_load(uri: &str, clients: usize, own_filter: bool, watch: Option<u32>, window: Duration) -> Cell {
    let filter = move |k: i32| {
        if own_filter {
            doc! { "$and": [{ "k": k }, { "tenantId": { "$eq": "acme" } }] }
        } else {
            doc! { "k": k }
        }
    };
    let mut handles = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut options = mongodb::options::ClientOptions::parse(uri).await.expect("connection string");
        options.max_pool_size = Some(1);
        options.server_selection_timeout = Some(Duration::from_secs(10));
        let client = mongodb::Client::with_options(options).expect("driver client");
        let items = client.database("app").collection::<Document>("items");
        // Connects and authenticates now, outside the window.
        items.find_one(filter(0)).await.expect("first find");
        handles.push((client, items));
    }
    let start = Instant::now() + WARMUP;
    let stop = start + window;
    let cpu = watch.map(|pid| {
        tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let before = (harness::cpu_time(pid), harness::context_switches(pid), harness::user_time(pid));
            tokio::time::sleep_until(stop.into()).await;
            let after = (harness::cpu_time(pid), harness::context_switches(pid), harness::user_time(pid));
            let switches = (after.1 .0 - before.1 .0, after.1 .1 - before.1 .1);
            (after.0.saturating_sub(before.0), switches, after.2.saturating_sub(before.2))
        })
    });
    // The machine around the relay: what the load generator itself used, and what was left idle or stolen.
    let machine = tokio::spawn(async move {
        let own = std::process::id();
        tokio::time::sleep_until(start.into()).await;
        let before = (harness::cpu_time(own), harness::machine_ticks());
        tokio::time::sleep_until(stop.into()).await;
        let after = (harness::cpu_time(own), harness::machine_ticks());
        let total = after.1 .2.saturating_sub(before.1 .2).max(1) as f64;
        let idle = after.1 .0.saturating_sub(before.1 .0) as f64 / total;
        let steal = after.1 .1.saturating_sub(before.1 .1) as f64 / total;
        (after.0.saturating_sub(before.0), idle, steal)
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (c, (client, items)) in handles.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut i = c as i32;
            loop {
                i = (i + 7) % KEYS;
                let sent = Instant::now();
                if sent >= stop {
                    break;
                }
                let found = items.find_one(filter(i)).await.expect("find_one");
                assert!(found.is_some_and(|d| d.contains_key("_id")), "find_one by key found nothing");
                if sent >= start {
                    latencies.push(sent.elapsed());
                }
            }
            drop(client);
            latencies
        });
    }
    let mut all = Vec::new();
    while let Some(latencies) = tasks.join_next().await {
        all.extend(latencies.expect("client task"));
    }
    let (cpu, switches, user) = match cpu {
        Some(task) => {
            task.await.map_or((None, (0, 0), None), |(cpu, switches, user)| (Some(cpu), switches, Some(user)))
        }
        None => (None, (0, 0), None),
    };
    let (own_cpu, idle, steal) = machine.await.unwrap_or((Duration::ZERO, f64::NAN, f64::NAN));
    let throughput = all.len() as f64 / window.as_secs_f64();
    Cell { throughput, latencies: Latencies::new(all), cpu, user, switches, window, own_cpu, idle, steal }
}

/// A tenantwall process (`exe`, or the build in use when `None`) in front of `backend` with one SCRAM user for
/// tenant `acme` and a field-mode rule on `app.items`: authentication, the canonical parse, the tenant filter
/// and the reply path all on.
fn field_mode_proxy(
    scratch: &Scratch,
    name: &str,
    backend: SocketAddr,
    verifier: &ScramVerifier,
    exe: Option<&Path>,
) -> ProxyProcess {
    let policy = scratch.write(
        &format!("{name}.toml"),
        &format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[backends]]\nname = \"b\"\nuri = \"mongodb://{backend}/\"\n\n\
             [[tenants]]\nid = \"acme\"\nbackend = \"b\"\nusers = [{{ name = \"{BENCH_USER}\", scram = \"{verifier}\" }}]\n\n\
             [[rules]]\ndatabase = \"app\"\ncollection = \"items\"\nmode = \"field\"\n"
        ),
    );
    match exe {
        Some(exe) => ProxyProcess::start_with(&policy, exe, std::env::var("TW_PROXY_WORKERS").ok()),
        None => ProxyProcess::start(&policy),
    }
}

/// The profile-guided build `scripts/build-pgo` leaves beside this one (`<target>/pgo/tenantwall`), or
/// `TW_PGO_EXE`; `None` (and a line saying so) when there is none. The full comparison measures it beside the
/// plain release build. A PGO build made from other source than the checkout's (the stamp the script wrote
/// beside it against `scripts/build-pgo stamp` now) is said, not refused.
fn pgo_build() -> Option<PathBuf> {
    let exe = match std::env::var_os("TW_PGO_EXE") {
        Some(exe) => PathBuf::from(exe),
        None => PathBuf::from(env!("CARGO_BIN_EXE_tenantwall")).parent()?.parent()?.join("pgo/tenantwall"),
    };
    if !exe.exists() {
        println!(
            "No profile-guided build at {} (scripts/build-pgo makes one): measuring the plain release build only.",
            exe.display()
        );
        return None;
    }
    let built_from = std::fs::read_to_string(exe.with_file_name("tenantwall.source")).ok();
    let now = std::process::Command::new(common::repo_root().join("scripts/build-pgo"))
        .arg("stamp")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
    match (built_from, now) {
        (Some(built), Some(now)) if built.trim() == now.trim() => {}
        (Some(_), Some(_)) => {
            println!(
                "Note: {} was built from other source than this checkout's; run scripts/build-pgo again.",
                exe.display()
            )
        }
        _ => println!("Note: cannot tell which source {} was built from.", exe.display()),
    }
    println!("Profile-guided build: {}", exe.display());
    Some(exe)
}

/// One way to the backend that the rounds measure.
struct LoadPath {
    label: String,
    /// The connection string; `None` when the path could not be set up (no HAProxy), its cells skipped.
    uri: Option<String>,
    /// The clients scope the filter themselves: the direct and HAProxy paths (see [`driver_load`]).
    own_filter: bool,
    /// The relay process in the path, whose CPU time the cells report.
    watch: Option<u32>,
}

impl LoadPath {
    /// The two paths every run compares against: `direct` to `backend`, and through HAProxy (labelled
    /// `haproxy_label`) when it runs. Their clients scope the filter themselves.
    fn baselines(backend: SocketAddr, haproxy: Option<&Haproxy>, haproxy_label: &str) -> Vec<LoadPath> {
        let uri = |addr: SocketAddr| format!("mongodb://{addr}/?directConnection=true");
        vec![
            LoadPath { label: "direct".into(), uri: Some(uri(backend)), own_filter: true, watch: None },
            LoadPath {
                label: haproxy_label.into(),
                uri: haproxy.map(|h| uri(h.addr)),
                own_filter: true,
                watch: haproxy.map(Haproxy::pid),
            },
        ]
    }

    /// Through tenantwall process `proxy`, as the bench user: the proxy scopes the filter.
    fn tenantwall(label: String, proxy: &ProxyProcess) -> LoadPath {
        LoadPath {
            label,
            uri: Some(format!("mongodb://{BENCH_USER}:{BENCH_PASSWORD}@{}/?authSource=admin", proxy.addrs[0])),
            own_filter: false,
            watch: Some(proxy.pid()),
        }
    }
}

/// The cells of one run: `cells[round][client count][path]`, `None` for a skipped path.
type Cells = Vec<Vec<Vec<Option<Cell>>>>;
/// One round of [`Cells`]: `round[client count][path]`.
type Round = [Vec<Option<Cell>>];

/// The window of one cell: `TW_LOAD_SECS` seconds (a positive number), else `default`.
fn load_window(default: Duration) -> Duration {
    std::env::var("TW_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or(default)
}

/// The rounds to run with `n` paths: `TW_LOAD_ROUNDS` rounded up to whole cycles of [`round_order`] (said when
/// it is), else the fewest whole cycles that make at least 4 rounds. A partial cycle would leave some path in
/// some position, or after some neighbour, once more than the others.
fn load_rounds(n: usize) -> usize {
    let cycle = balanced_cycle(n);
    match std::env::var("TW_LOAD_ROUNDS").ok().and_then(|r| r.parse::<usize>().ok()).filter(|&r| r > 0) {
        Some(asked) => {
            let rounds = asked.div_ceil(cycle) * cycle;
            if rounds != asked {
                println!(
                    "TW_LOAD_ROUNDS={asked} rounded up to {rounds}: whole cycles of {cycle} keep {n} paths balanced"
                );
            }
            rounds
        }
        None => 4usize.div_ceil(cycle) * cycle,
    }
}

/// The rounds after which [`round_order`] repeats for `n` paths: `n`, or `2n` when `n` is odd.
fn balanced_cycle(n: usize) -> usize {
    if n % 2 == 1 {
        2 * n
    } else {
        n.max(1)
    }
}

/// The machine's load average, as `/proc/loadavg` gives it.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned()
}

/// The order of `n` paths in round `round`: a Williams design, so that over each cycle of `n` rounds (`2n` when `n`
/// is odd; [`balanced_cycle`]) every path runs in every position equally often and right after every other path
/// equally often. The machine's state drifts within minutes and one cell's teardown can reach into the next, so a
/// fixed order, or a rotation (where each path always follows the same neighbour), would hand one path the same bias
/// every round: the same build measured twice in one rotating run came out 1.00× and 0.92× of HAProxy's throughput.
fn round_order(n: usize, round: usize) -> Vec<usize> {
    // First row 0, 1, n-1, 2, n-2, ...; the others add the row number; for odd n, then the same rows reversed.
    let first = (0..n).map(|j| if j % 2 == 1 { j.div_ceil(2) } else { (n - j / 2) % n });
    let k = round % balanced_cycle(n);
    let mut order: Vec<usize> = first.map(|v| (v + k % n) % n).collect();
    if k >= n {
        order.reverse();
    }
    order
}

/// Every path that could be set up, at every client count, in [`load_rounds`] rounds of `window`, in the order
/// [`round_order`] gives (counted over those paths only, so a skipped one leaves no gap in the design). Says
/// how many rounds it runs. `each` sees every cell as it is done (round, client count index, path index), for
/// printing.
async fn measure_rounds(
    paths: &[LoadPath],
    counts: &[usize],
    window: Duration,
    mut each: impl FnMut(usize, usize, usize, &Cell),
) -> Cells {
    let live: Vec<usize> = (0..paths.len()).filter(|&p| paths[p].uri.is_some()).collect();
    let rounds = load_rounds(live.len());
    println!(
        "{rounds} rounds of {:.1} s per cell, {} paths in a balanced order; medians over rounds. Load average: {}",
        window.as_secs_f64(),
        live.len(),
        loadavg()
    );
    let mut cells: Cells =
        (0..rounds).map(|_| counts.iter().map(|_| paths.iter().map(|_| None).collect()).collect()).collect();
    for (round, round_cells) in cells.iter_mut().enumerate() {
        for (c, &clients) in counts.iter().enumerate() {
            for p in round_order(live.len(), round + c).into_iter().map(|i| live[i]) {
                let path = &paths[p];
                let Some(uri) = path.uri.as_deref() else { continue };
                let cell = driver_load(uri, clients, path.own_filter, path.watch, window).await;
                each(round, c, p, &cell);
                round_cells[c][p] = Some(cell);
            }
        }
    }
    cells
}

/// The median over rounds of `stat` of path `p` at client count index `c` (`None` when no round has it).
fn median_cell(cells: &Cells, c: usize, p: usize, stat: impl Fn(&Cell) -> Option<f64>) -> Option<f64> {
    median_rounds(cells, |round| round[c][p].as_ref().and_then(&stat))
}

/// What `f` gives for each round, leaving out the rounds it gives nothing for.
fn per_round(cells: &Cells, f: impl Fn(&Round) -> Option<f64>) -> Vec<f64> {
    cells.iter().filter_map(|round| f(round)).collect()
}

/// The median over rounds of what `f` gives for each round (`None` when it gives nothing for any).
fn median_rounds(cells: &Cells, f: impl Fn(&Round) -> Option<f64>) -> Option<f64> {
    let values = per_round(cells, f);
    (!values.is_empty()).then(|| median(values))
}

/// Path `p` against HAProxy (path 1) and direct (path 0), one value per round, each against the same round's cells:
/// (p50 over HAProxy's at the first client count; the p50 it adds over direct against what HAProxy adds, only where
/// HAProxy adds at least 1 µs and a tenth of direct's p50, in every round: against a slow backend what a relay adds
/// drowns in the backend's own variance, and the ratio of two such differences is noise that can come out negative or
/// in the tens; throughput over HAProxy's at the last count).
fn ratios(cells: &Cells, p: usize) -> [Vec<f64>; 3] {
    let p50 = |round: &Round, q: usize| round[0][q].as_ref().map(|c| c.latencies.p50_us());
    let total = per_round(cells, |r| Some(p50(r, p)? / p50(r, 1)?));
    let mut added = per_round(cells, |r| {
        let (d, h, t) = (p50(r, 0)?, p50(r, 1)?, p50(r, p)?);
        (h - d >= 1.0_f64.max(d / 10.0)).then(|| (t - d) / (h - d))
    });
    // The rounds that pass against a slow backend are its outliers, not a measurement.
    if added.len() < cells.len() {
        added.clear();
    }
    let throughput = per_round(cells, |r| {
        let last = r.last()?;
        Some(last[p].as_ref()?.throughput / last[1].as_ref()?.throughput)
    });
    [total, added, throughput]
}

/// Per-round ratios as their median, with the middle half of the rounds in brackets once there are four or
/// more ("0.97× (0.91–1.02)"): how far one round's ratio strays on this machine is part of the result. From six
/// rounds on, the brackets also give the 95% confidence interval of the median ([`median_interval`]): "0.97×
/// (0.91–1.02; CI 0.93–1.00)". The middle half says how far one round strays, the interval how far the median
/// itself could be from the one a longer run would find.
fn ratio_text(values: &[f64]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q| quantile(&sorted, q);
    match (sorted.len(), median_interval(&sorted)) {
        (0, _) => "n/a".into(),
        (1..=3, _) => format!("{:.2}×", at(0.5)),
        (_, None) => format!("{:.2}× ({:.2}–{:.2})", at(0.5), at(0.25), at(0.75)),
        (_, Some((low, high))) => {
            format!("{:.2}× ({:.2}–{:.2}; CI {low:.2}–{high:.2})", at(0.5), at(0.25), at(0.75))
        }
    }
}

/// The distribution-free 95% confidence interval of the median of `sorted` (ascending): the `k`-th smallest and
/// the `k`-th largest value, for the largest `k` with at most 2.5% chance that fewer than `k` of the values fall
/// below the true median (the binomial distribution with p = ½), so that the interval holds it with at least
/// 95% chance whatever the shape of the distribution. It takes six values at least (`None` below). It assumes
/// the rounds are independent: each ratio is taken within its own round, which cancels the machine's drift over
/// minutes, but the interval speaks for this run's machine state only (an hour apart, two 64-client runs gave
/// intervals that did not overlap: fifteenth round), so it is a floor on the uncertainty, not a ceiling.
fn median_interval(sorted: &[f64]) -> Option<(f64, f64)> {
    let n = sorted.len();
    // P(X <= j) for X ~ Binomial(n, ½), summed term by term: C(n, j + 1) = C(n, j) (n - j) / (j + 1).
    let mut term = 0.5_f64.powi(i32::try_from(n).ok()?);
    let mut below = 0.0;
    let mut k = 0;
    for j in 0..n / 2 {
        below += term;
        if below > 0.025 {
            break;
        }
        k = j + 1;
        term *= (n - j) as f64 / (j + 1) as f64;
    }
    (k > 0).then(|| (sorted[k - 1], sorted[n - k]))
}

/// Issue 10's two speed goals for one build, from its per-round [`ratios`] at client counts `first` and `last`:
/// each verdict from [`goal_verdict`], on the total p50 at 1 client (the goal's measure here), on the added p50
/// (the goal's words read the other way), and on throughput at 64 clients; "n/a" where the run had not that
/// count first or last.
fn goal_text(label: &str, [total, added, throughput]: &[Vec<f64>; 3], first: usize, last: usize) -> String {
    let verdict = |values: &Vec<f64>, line, at_most, applies: bool| match values.len() {
        n if n == 0 || !applies => "n/a".to_owned(),
        n @ 1..=5 => format!("not judged ({n} rounds; an interval takes 6)"),
        n => format!("{} over {n} rounds", goal_verdict(values, line, at_most)),
    };
    let (one, many) = (first == 1, last == 64);
    format!(
        "{label}: p50 at 1 client ≤ 1.10× HAProxy's {}; added p50 ≤ 1.10× HAProxy's {}; throughput at 64 ≥ 0.95× HAProxy's {}",
        verdict(total, 1.10, true, one),
        verdict(added, 1.10, true, one),
        verdict(throughput, 0.95, false, many),
    )
}

/// Whether the rounds' `ratios` show a goal met: "met" when the median's 95% confidence interval
/// ([`median_interval`]) lies wholly on the goal's side of `line` (at most `line` when `at_most`, else at least),
/// "missed" when it lies wholly on the other side, "undecided" when it straddles the line, and "not judged"
/// below six rounds.
fn goal_verdict(ratios: &[f64], line: f64, at_most: bool) -> &'static str {
    let mut sorted = ratios.to_vec();
    sorted.sort_by(f64::total_cmp);
    let Some((low, high)) = median_interval(&sorted) else { return "not judged" };
    let (good, bad) = if at_most { (high <= line, low > line) } else { (low >= line, high < line) };
    match (good, bad) {
        (true, _) => "met",
        (_, true) => "missed",
        _ => "undecided",
    }
}

/// The `q` quantile of `sorted` (ascending), interpolating linearly between the two nearest values; NaN when
/// empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else { return f64::NAN };
    let at = q.clamp(0.0, 1.0) * last as f64;
    let (low, high) = (sorted[at.floor() as usize], sorted[at.ceil() as usize]);
    low + (high - low) * at.fract()
}

/// `value` with `format`, or "n/a".
fn or_na(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map_or_else(|| "n/a".to_owned(), format)
}

/// One backend's rows of the full comparison: direct, HAProxy and each tenantwall build (label, process) at each
/// client count over the rounds, one row per path and count with the medians over rounds; returns, per build,
/// its ratios line and its goals line ([`goal_text`]).
async fn compare_backend(
    backend_name: &str,
    backend: SocketAddr,
    haproxy: Option<&Haproxy>,
    proxies: &[(&str, ProxyProcess)],
    window: Duration,
) -> Vec<(String, String)> {
    let mut paths = LoadPath::baselines(backend, haproxy, "HAProxy (TCP mode)");
    for (label, proxy) in proxies {
        paths.push(LoadPath::tenantwall(format!("tenantwall{label} (SCRAM, field mode)"), proxy));
    }
    println!();
    print!("{backend_name}: ");
    let cells = measure_rounds(&paths, &COMPARE_CLIENTS, window, |round, c, p, cell| {
        eprintln!(
            "load: {backend_name}, round {round}, {}, {} clients: {:.0} cmd/s, p50 {:.0} µs",
            paths[p].label,
            COMPARE_CLIENTS[c],
            cell.throughput,
            cell.latencies.p50_us()
        );
    })
    .await;
    println!("| backend | path | clients | throughput | p50 | p99 | relay CPU per command |");
    println!("|---|---|---|---|---|---|---|");
    for (c, clients) in COMPARE_CLIENTS.iter().enumerate() {
        for (p, path) in paths.iter().enumerate() {
            if path.uri.is_none() {
                println!("| {backend_name} | {} | {clients} | skipped | | | |", path.label);
                continue;
            }
            let throughput = median_cell(&cells, c, p, |cell| Some(cell.throughput));
            let p50 = median_cell(&cells, c, p, |cell| Some(cell.latencies.p50_us()));
            let p99 = median_cell(&cells, c, p, |cell| Some(cell.latencies.p99_us()));
            let cpu = median_cell(&cells, c, p, Cell::cpu_per_command_us);
            println!(
                "| {backend_name} | {} | {clients} | {} | {} | {} | {} |",
                path.label,
                or_na(throughput, |t| format!("{t:.0} cmd/s")),
                or_na(p50, |v| format!("{v:.0} µs")),
                or_na(p99, |v| format!("{v:.0} µs")),
                or_na(cpu, |v| format!("{v:.1} µs")),
            );
        }
    }
    (2..paths.len())
        .map(|p| {
            let per_round = ratios(&cells, p);
            let [total, added, throughput] = &per_round;
            let row = format!(
                "| {backend_name} | tenantwall{} | {} | {} | {} |",
                proxies[p - 2].0,
                ratio_text(total),
                ratio_text(added),
                ratio_text(throughput),
            );
            let label = format!("{backend_name}, tenantwall{}", proxies[p - 2].0);
            let (first, last) = (COMPARE_CLIENTS[0], COMPARE_CLIENTS[COMPARE_CLIENTS.len() - 1]);
            (row, goal_text(&label, &per_round, first, last))
        })
        .collect()
}

/// The tenantwall builds of the full comparison in front of `backend`: the plain release build, and the
/// profile-guided one when there is one.
fn compare_proxies(
    scratch: &Scratch,
    name: &str,
    backend: SocketAddr,
    verifier: &ScramVerifier,
    pgo: Option<&Path>,
) -> Vec<(&'static str, ProxyProcess)> {
    let mut proxies = vec![("", field_mode_proxy(scratch, name, backend, verifier, None))];
    if let Some(exe) = pgo {
        proxies.push((" PGO", field_mode_proxy(scratch, &format!("{name}-pgo"), backend, verifier, Some(exe))));
    }
    proxies
}

/// The window of one cell of the full comparison unless `TW_LOAD_SECS` says otherwise: shorter windows and
/// more rounds spread bursts of noise from the rest of the machine over more samples.
const COMPARE_WINDOW: Duration = Duration::from_millis(1500);

/// The comparison table (see the module docs).
async fn compare() {
    let haproxy_exe = harness::find_or_install_haproxy();
    if let Err(why) = &haproxy_exe {
        println!("HAProxy column skipped: {why}");
    }
    let pgo = pgo_build();
    let window = load_window(COMPARE_WINDOW);
    let scratch = Scratch::new("load-compare");
    let verifier = ScramVerifier::generate(BENCH_PASSWORD, DEFAULT_ITERATIONS).expect("verifier");
    let mut ratios = Vec::new();

    let (stub_guard, stub) = stub_process();
    let relay = haproxy_exe.as_ref().ok().map(|exe| Haproxy::start(exe, stub));
    if let Some(Err(why)) = &relay {
        println!("HAProxy column skipped: {why}");
    }
    let proxies = compare_proxies(&scratch, "stub", stub, &verifier, pgo.as_deref());
    let haproxy = relay.as_ref().and_then(|r| r.as_ref().ok());
    ratios.extend(compare_backend("stub", stub, haproxy, &proxies, window).await);
    drop((proxies, relay, stub_guard));

    if common::repo_root().join(".venv/bin/nx-27017").exists() {
        let nx = common::Backend::start();
        let nx_addr: SocketAddr = ([127, 0, 0, 1], nx.port).into();
        let seed = common::client(nx_addr, None).await;
        let docs: Vec<Document> = (0..KEYS).map(|k| doc! { "k": k, "tenantId": "acme", "v": "x" }).collect();
        seed.database("app").collection::<Document>("items").insert_many(docs).await.expect("seed nx-27017");
        let relay = haproxy_exe.as_ref().ok().map(|exe| Haproxy::start(exe, nx_addr));
        let proxies = compare_proxies(&scratch, "nx", nx_addr, &verifier, pgo.as_deref());
        let haproxy = relay.as_ref().and_then(|r| r.as_ref().ok());
        ratios.extend(compare_backend("nx-27017", nx_addr, haproxy, &proxies, window).await);
    } else {
        println!("nx-27017 rows skipped: no .venv/bin/nx-27017 (run scripts/backend setup)");
    }

    println!();
    println!("Load average: {}", loadavg());
    println!("| backend | build | tenantwall p50 / HAProxy p50, 1 client | added p50 vs HAProxy's, 1 client | tenantwall / HAProxy throughput, 64 clients |");
    println!("|---|---|---|---|---|");
    for (row, _) in &ratios {
        println!("{row}");
    }
    println!();
    println!("Issue 10's goals, by the 95% confidence interval of each median ratio (the stub's rows decide):");
    for (_, goal) in &ratios {
        println!("- {goal}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Quick A/B: the fast stub only, 1 and 64 clients, several interleaved rounds, other proxy builds beside this one.

/// Client counts of the quick mode: the two issue 10's goals are about (the first is the latency one, the last
/// the throughput one). `TW_QUICK_CLIENTS=1` (a comma-separated list) runs other counts, e.g. one alone for a
/// syscall count.
const QUICK_CLIENTS: [usize; 2] = [1, 64];

/// A tenantwall build the quick mode measures: a label, its executable and its async worker threads.
struct Variant {
    label: String,
    exe: PathBuf,
    workers: Option<String>,
    /// The tenant's in-flight cap for this variant, over `TW_QUICK_MAX_IN_FLIGHT`.
    cap: Option<String>,
}

/// The builds to compare: `TW_PROXY_VARIANTS="label=path[@workers][#cap];..."`, where an empty path is this
/// build and `cap` the tenant's in-flight cap (so one build can be paired with itself under another cap); by
/// default this build alone, with `TW_PROXY_WORKERS` threads.
fn quick_variants() -> Vec<Variant> {
    let this = PathBuf::from(env!("CARGO_BIN_EXE_tenantwall"));
    let Ok(spec) = std::env::var("TW_PROXY_VARIANTS") else {
        return vec![Variant {
            label: "tenantwall".into(),
            exe: this,
            workers: std::env::var("TW_PROXY_WORKERS").ok(),
            cap: None,
        }];
    };
    spec.split(';')
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            let (label, rest) = v.split_once('=').expect("TW_PROXY_VARIANTS entry is label=path[@workers][#cap]");
            let (rest, cap) = match rest.split_once('#') {
                Some((rest, cap)) => (rest, Some(cap.trim().to_owned())),
                None => (rest, None),
            };
            let (exe, workers) = match rest.split_once('@') {
                Some((exe, workers)) => (exe, Some(workers.to_owned())),
                None => (rest, None),
            };
            let exe = if exe.is_empty() { this.clone() } else { PathBuf::from(exe) };
            Variant { label: label.trim().to_owned(), exe, workers, cap }
        })
        .collect()
}

/// The median of `values` (NaN when empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    quantile(&values, 0.5)
}

/// `cargo bench --bench load -- quick`: direct, HAProxy and each tenantwall variant against the fast stub at 1 and 64
/// clients, for `TW_LOAD_ROUNDS` rounds (whole cycles of the balanced order, [`load_rounds`]) of `TW_LOAD_SECS`
/// windows (default 3 s). Prints every cell, then per variant the median over rounds of each round's ratios (each
/// round's tenantwall cell against the same round's HAProxy cell).
async fn quick() {
    let window = load_window(MEASURE);
    let haproxy_exe = harness::find_or_install_haproxy().expect("the quick mode compares against HAProxy");
    let scratch = Scratch::new("load-quick");
    let verifier = ScramVerifier::generate(BENCH_PASSWORD, DEFAULT_ITERATIONS).expect("verifier");
    let (_stub, stub) = stub_process();
    let relay = Haproxy::start(&haproxy_exe, stub).expect("HAProxy");
    let variants = quick_variants();
    let counts: Vec<usize> = match std::env::var("TW_QUICK_CLIENTS") {
        Ok(list) => list.split(',').map(|n| n.trim().parse().expect("TW_QUICK_CLIENTS: client counts")).collect(),
        Err(_) => QUICK_CLIENTS.to_vec(),
    };
    let mut paths = LoadPath::baselines(stub, Some(&relay), "HAProxy");
    // TW_QUICK_MAX_IN_FLIGHT sets the tenant's in-flight cap (default: the policy default), e.g. low enough that
    // most clients queue at the gate.
    let default_cap = std::env::var("TW_QUICK_MAX_IN_FLIGHT").ok();
    let mut proxies = Vec::new();
    for (i, variant) in variants.iter().enumerate() {
        let cap =
            variant.cap.as_ref().or(default_cap.as_ref()).map(|n| format!("max_in_flight = {n}\n")).unwrap_or_default();
        let policy = scratch.write(
            &format!("quick{i}.toml"),
            &format!(
                "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[backends]]\nname = \"b\"\nuri = \"mongodb://{stub}/\"\n\n\
                 [[tenants]]\nid = \"acme\"\nbackend = \"b\"\nusers = [{{ name = \"{BENCH_USER}\", scram = \"{verifier}\" }}]\n{cap}\n\
                 [[rules]]\ndatabase = \"app\"\ncollection = \"items\"\nmode = \"field\"\n"
            ),
        );
        let proxy = ProxyProcess::start_with(&policy, &variant.exe, variant.workers.clone());
        eprintln!("load: {} is pid {} ({})", variant.label, proxy.pid(), variant.exe.display());
        paths.push(LoadPath::tenantwall(variant.label.clone(), &proxy));
        proxies.push(proxy);
    }
    let mut header = true;
    let cells = measure_rounds(&paths, &counts, window, |round, c, p, cell| {
        // Printed here, after the line measure_rounds opens with, so that the table stays one table.
        if std::mem::take(&mut header) {
        println!("| round | path | clients | throughput | p50 | p99 | relay CPU per command (of which user) | relay context switches per command (voluntary / involuntary) | load generator CPU per command | machine idle / stolen |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        }
        let cpu = cell.cpu_per_command_us().unwrap_or(f64::NAN);
        let user = cell.user_per_command_us().unwrap_or(f64::NAN);
        let (voluntary, involuntary) = cell.switches_per_command();
        println!(
            "| {round} | {} | {} | {:.0} cmd/s | {:.0} µs | {:.0} µs | {cpu:.1} ({user:.1}) µs | {voluntary:.2} / {involuntary:.2} | {:.1} µs | {:.0}% / {:.0}% |",
            paths[p].label,
            counts[c],
            cell.throughput,
            cell.latencies.p50_us(),
            cell.latencies.p99_us(),
            cell.own_cpu_per_command_us().unwrap_or(f64::NAN),
            cell.idle * 100.0,
            cell.steal * 100.0,
        );
    })
    .await;
    println!("load average: {}", loadavg());
    println!();
    let (first, last) = (counts[0], counts.len() - 1);
    let most = counts[last];
    println!("| path | p50, {first} client(s) (median) | throughput, {most} clients (median) | p50 / HAProxy's, {first} | added p50 / HAProxy's, {first} | throughput / HAProxy's, {most} | relay CPU per command, {first} / {most} | of which user, {first} / {most} |");
    println!("|---|---|---|---|---|---|---|---|");
    let us = |v: Option<f64>| or_na(v, |v| format!("{v:.1}"));
    let mut goals = Vec::new();
    for (p, path) in paths.iter().enumerate() {
        let p50 = median_cell(&cells, 0, p, |cell| Some(cell.latencies.p50_us()));
        let tput = median_cell(&cells, last, p, |cell| Some(cell.throughput));
        let per_round = ratios(&cells, p);
        if p >= 2 {
            goals.push(goal_text(&path.label, &per_round, first, most));
        }
        let [ratio, added, tratio] = per_round;
        let cpu_first = median_cell(&cells, 0, p, Cell::cpu_per_command_us);
        let cpu_most = median_cell(&cells, last, p, Cell::cpu_per_command_us);
        let user_first = median_cell(&cells, 0, p, Cell::user_per_command_us);
        let user_most = median_cell(&cells, last, p, Cell::user_per_command_us);
        println!(
            "| {} | {} µs | {} cmd/s | {} | {} | {} | {} / {} µs | {} / {} µs |",
            path.label,
            or_na(p50, |v| format!("{v:.0}")),
            or_na(tput, |v| format!("{v:.0}")),
            ratio_text(&ratio),
            ratio_text(&added),
            ratio_text(&tratio),
            us(cpu_first),
            us(cpu_most),
            us(user_first),
            us(user_most),
        );
    }
    println!();
    println!("Issue 10's goals, by the 95% confidence interval of each median ratio:");
    for line in goals {
        println!("- {line}");
    }
    drop(proxies);
}

// ---------------------------------------------------------------------------------------------------------------
// Many clients: 10,000 connected, authenticated clients on one proxy process.

/// Clients of the `many` scenario, spread evenly over [`MANY_TENANTS`] tenants.
const MANY_CLIENTS: usize = 10_000;
const MANY_TENANTS: usize = 100;
/// Connections authenticating at once while the clients connect (SCRAM's PBKDF2 runs in this process).
const CONNECTING_AT_ONCE: usize = 64;
/// The paced phase: every client sends one find a second.
const PACED: Duration = Duration::from_secs(10);
/// The closed-loop phase: every client sends its next find as soon as the last one is answered.
const CLOSED_LOOP: Duration = Duration::from_secs(5);

/// A raw client connection: OP_MSG commands, one at a time.
struct RawConn {
    write: tokio::net::tcp::OwnedWriteHalf,
    reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    next_id: i32,
}

impl RawConn {
    async fn connect(addr: SocketAddr) -> std::io::Result<RawConn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        Ok(RawConn { write, reader: FrameReader::new(read, 48_000_000, None), next_id: 1 })
    }

    /// Sends `body` and returns the reply's body; `Err` when the connection failed or the reply is not OP_MSG.
    async fn command(&mut self, body: bson::RawDocumentBuf) -> Result<bson::RawDocumentBuf, String> {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let frame = OpMsg::new(MsgFlags::default(), body).encode(self.next_id, 0).map_err(|e| e.to_string())?;
        self.write.write_all(&frame).await.map_err(|e| e.to_string())?;
        let reply = self.reader.next_frame().await.map_err(|e| format!("{e:?}"))?.ok_or("closed by the proxy")?;
        match decode(reply).map_err(|e| e.to_string())?.message {
            Message::Msg(msg) => Ok(msg.body().to_owned()),
            _ => Err("reply is not OP_MSG".into()),
        }
    }

    /// Authenticates with SCRAM-SHA-256 through `saslStart`/`saslContinue`, as drivers do, using the proxy's own
    /// SCRAM client.
    async fn authenticate(&mut self, user: &str, password: &str) -> Result<(), String> {
        let binary = |bytes: Vec<u8>| bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes };
        let ok = |reply: &bson::RawDocumentBuf| match reply.get("ok") {
            Ok(Some(bson::RawBsonRef::Double(v))) => v == 1.0,
            Ok(Some(bson::RawBsonRef::Int32(v))) => v == 1,
            _ => false,
        };
        let (mut scram, first) = ScramClient::new(user, password).map_err(|e| e.to_string())?;
        let reply = self
            .command(rawdoc! {
                "saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": binary(first),
                "options": { "skipEmptyExchange": true }, "$db": "admin"
            })
            .await?;
        if !ok(&reply) {
            return Err(format!("saslStart refused: {reply:?}"));
        }
        let payload = reply.get_binary("payload").map_err(|e| e.to_string())?.bytes.to_vec();
        let client_final = scram.handle_server_first(&payload).map_err(|e| e.to_string())?;
        let reply = self
            .command(
                rawdoc! { "saslContinue": 1, "conversationId": 1, "payload": binary(client_final), "$db": "admin" },
            )
            .await?;
        if !ok(&reply) {
            return Err(format!("saslContinue refused: {reply:?}"));
        }
        let payload = reply.get_binary("payload").map_err(|e| e.to_string())?.bytes.to_vec();
        scram.verify_server_final(&payload).map_err(|e| e.to_string())?;
        if !reply.get_bool("done").unwrap_or(false) {
            return Err("the conversation did not finish after the server's signature".into());
        }
        Ok(())
    }

    /// A find on the field-mode collection; `Err` unless the reply is `ok: 1`.
    async fn find(&mut self, key: i32) -> Result<(), String> {
        let reply = self
            .command(rawdoc! { "find": "items", "filter": { "k": key }, "limit": 1, "singleBatch": true, "$db": "app" })
            .await?;
        match reply.get("ok") {
            Ok(Some(bson::RawBsonRef::Double(1.0))) => Ok(()),
            _ => Err(format!("find failed: {reply:?}")),
        }
    }
}

/// What the sampler saw during one phase: the highest backend connection counts and the proxy's resident set.
#[derive(Default, Clone, Copy)]
struct Peak {
    gauge: Option<f64>,
    established: usize,
    rss_mib: f64,
}

impl Peak {
    fn take(proxy: &ProxyProcess, backend_port: u16) -> Peak {
        Peak {
            gauge: proxy.metric("tenantwall_backend_connections"),
            established: harness::established_to(backend_port),
            rss_mib: proxy.rss_mib(),
        }
    }

    fn max(self, other: Peak) -> Peak {
        Peak {
            gauge: match (self.gauge, other.gauge) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            established: self.established.max(other.established),
            rss_mib: self.rss_mib.max(other.rss_mib),
        }
    }

    fn gauge_text(&self) -> String {
        self.gauge.map_or("n/a".into(), |g| format!("{g:.0}"))
    }
}

/// Samples [`Peak`] every second until `stop` (with 20,000 sockets open, reading /proc/net/tcp is not free); returns the highest values.
fn sample_until(proxy: Arc<ProxyProcess>, backend_port: u16, stop: Instant) -> tokio::task::JoinHandle<Peak> {
    tokio::task::spawn_blocking(move || {
        let mut peak = Peak::take(&proxy, backend_port);
        while Instant::now() < stop {
            std::thread::sleep(Duration::from_secs(1));
            peak = peak.max(Peak::take(&proxy, backend_port));
        }
        peak
    })
}

/// How the clients of a `many` phase send their finds.
#[derive(Clone, Copy, PartialEq)]
enum Pace {
    /// One find each, all at once.
    Once,
    /// One find a second each, the clients spread over the second.
    PerSecond,
    /// Back to back.
    ClosedLoop,
}

/// Every client sends finds as `pace` says until `stop`; returns (commands per second, latencies). Any failed
/// command panics.
async fn many_phase(conns: Vec<RawConn>, stop: Instant, pace: Pace) -> (Vec<RawConn>, f64, Latencies) {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (c, mut conn) in conns.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut next = Instant::now() + Duration::from_micros((c as u64 * 7_919) % 1_000_000);
            let mut key = c as i32;
            loop {
                if pace == Pace::PerSecond {
                    tokio::time::sleep_until(next.into()).await;
                    next += Duration::from_secs(1);
                }
                let sent = Instant::now();
                if sent >= stop {
                    break;
                }
                key = (key + 1) % KEYS;
                conn.find(key).await.unwrap_or_else(|e| panic!("client {c}: {e}"));
                latencies.push(sent.elapsed());
                if pace == Pace::Once {
                    break;
                }
            }
            (conn, latencies)
        });
    }
    let (mut conns, mut all) = (Vec::new(), Vec::new());
    while let Some(done) = tasks.join_next().await {
        let (conn, latencies) = done.expect("client task");
        conns.push(conn);
        all.extend(latencies);
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    (conns, rate, Latencies::new(all))
}

/// The fast stub in its own process (this bench binary again, in `stub-server` mode), as a backend is: its sockets
/// count against that process's open-file limit, not this one's, and its work runs on its own threads, not on the
/// load generator's runtime, where it made the direct path's throughput swing by a factor of two from round to
/// round. It exits when its stdin closes, i.e. when this process ends, however it ends, and is stopped when the
/// returned guard drops.
fn stub_process() -> (StubProcess, SocketAddr) {
    let mut child = std::process::Command::new(std::env::current_exe().expect("own executable"))
        .args(["--bench", "stub-server"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the stub process");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut line)
        .expect("stub address");
    let addr = line.trim().rsplit(' ').next().and_then(|a| a.parse().ok()).expect("stub prints its address");
    (StubProcess(child), addr)
}

/// The stub's process, stopped when dropped.
struct StubProcess(std::process::Child);

impl Drop for StubProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `stub-server` mode: serves the fast stub until stdin closes.
async fn stub_server() {
    let addr = stub::fast_stub_backend().await;
    println!("stub listening on {addr}");
    let _ = tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await;
}

/// 10,000 authenticated raw clients on one proxy process in front of the fast stub (see the module docs).
async fn many() {
    // Each client holds a socket here and one in the proxy (a child, which inherits the raised limit), which adds
    // its pooled backend connections (64 by default) and its listeners.
    let limit = harness::raise_nofile(65_536);
    let clients = MANY_CLIENTS.min((limit as usize).saturating_sub(512));
    if clients < MANY_CLIENTS {
        println!("open-file limit {limit}: running {clients} clients instead of {MANY_CLIENTS} (raise `ulimit -Hn`)");
    }
    let (stub_guard, stub) = stub_process();
    let scratch = Scratch::new("load-many");
    // One verifier for every user keeps set-up fast; the user name decides the tenant. MIN_ITERATIONS, the lowest
    // count the policy accepts, because this process runs the client side of 10,000 conversations.
    let verifier = ScramVerifier::generate(BENCH_PASSWORD, MIN_ITERATIONS).expect("verifier");
    let mut policy = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [limits]\nmax_connections = {max}\nmax_connections_per_ip = {max}\n\
         max_unauthenticated_connections_per_ip = {unauth}\n\n\
         [[backends]]\nname = \"stub\"\nuri = \"mongodb://{stub}/\"\n\n",
        max = clients + 100,
        unauth = CONNECTING_AT_ONCE * 2,
    );
    for t in 0..MANY_TENANTS {
        policy.push_str(&format!(
            "[[tenants]]\nid = \"t{t:03}\"\nbackend = \"stub\"\nusers = [{{ name = \"u{t:03}\", scram = \"{verifier}\" }}]\n\n"
        ));
    }
    policy.push_str("[[rules]]\ndatabase = \"app\"\ncollection = \"items\"\nmode = \"field\"\n");
    let proxy = Arc::new(ProxyProcess::start(&scratch.write("many.toml", &policy)));
    let addr = proxy.addrs[0];
    let idle_rss = proxy.rss_mib();

    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECTING_AT_ONCE));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let gate = gate.clone();
        tasks.spawn(async move {
            let _turn = gate.acquire_owned().await.expect("gate");
            let mut conn = RawConn::connect(addr).await.unwrap_or_else(|e| panic!("client {c}: connect: {e}"));
            let user = format!("u{:03}", c % MANY_TENANTS);
            conn.authenticate(&user, BENCH_PASSWORD).await.unwrap_or_else(|e| panic!("client {c}: {e}"));
            conn
        });
    }
    let mut conns = Vec::with_capacity(clients);
    while let Some(conn) = tasks.join_next().await {
        conns.push(conn.expect("connect task"));
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // Let the proxy settle (and a pool shed what it opened during the logins, if it does) before looking.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = Peak::take(&proxy, stub.port());
    assert_eq!(
        proxy.metric("tenantwall_connections").map(|c| c as usize),
        Some(clients),
        "the proxy should count every client connected"
    );

    let (conns, _, first) = many_phase(conns, Instant::now() + Duration::from_secs(60), Pace::Once).await;
    let first_peak = Peak::take(&proxy, stub.port());
    let stop = Instant::now() + PACED;
    let sampler = sample_until(proxy.clone(), stub.port(), stop);
    let (conns, paced_rate, paced) = many_phase(conns, stop, Pace::PerSecond).await;
    let paced_peak = sampler.await.expect("sampler");
    let stop = Instant::now() + CLOSED_LOOP;
    let sampler = sample_until(proxy.clone(), stub.port(), stop);
    let (conns, loop_rate, looped) = many_phase(conns, stop, Pace::ClosedLoop).await;
    let loop_peak = sampler.await.expect("sampler");

    println!(
        "{clients} clients of {MANY_TENANTS} tenants connected and authenticated in {connect_secs:.1} s; proxy RSS \
         {idle_rss:.0} MiB before they came, peak {:.0} MiB",
        proxy.peak_rss_mib()
    );
    println!();
    println!(
        "| phase | commands/s | p50 | p99 | backend connections (gauge) | backend connections (TCP) | proxy RSS |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| connected, idle | - | - | - | {} | {} | {:.0} MiB |",
        idle.gauge_text(),
        idle.established,
        idle.rss_mib
    );
    println!(
        "| first find of every client, all at once | - | {:.2} ms | {:.2} ms | {} | {} | {:.0} MiB |",
        first.p50_us() / 1000.0,
        first.p99_us() / 1000.0,
        first_peak.gauge_text(),
        first_peak.established,
        first_peak.rss_mib
    );
    for (name, rate, latencies, peak) in
        [("1 find/s per client", paced_rate, &paced, paced_peak), ("closed loop", loop_rate, &looped, loop_peak)]
    {
        println!(
            "| {name} | {rate:.0} | {:.2} ms | {:.2} ms | {} (peak) | {} (peak) | {:.0} MiB (peak) |",
            latencies.p50_us() / 1000.0,
            latencies.p99_us() / 1000.0,
            peak.gauge_text(),
            peak.established,
            peak.rss_mib
        );
    }
    drop((conns, stub_guard));
}

// ---------------------------------------------------------------------------------------------------------------
// Raw clients: the proxy's own cost per command, without a driver's.

/// Concurrent connections for the raw throughput run; the latency run uses one.
const CONNECTIONS: usize = 32;
const ROUND_TRIPS: usize = 2_000;

async fn proxy(backend: SocketAddr, mode: &str) -> SocketAddr {
    let rule = match mode {
        "field" => "[[rules]]\ndatabase = \"app\"\ncollection = \"items\"\nmode = \"field\"\n",
        _ => "[[rules]]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{db}\"\n",
    };
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\ntenant = \"acme\"\n[[backends]]\nname = \"stub\"\nuri = \"mongodb://{backend}/\"\n\
         [[tenants]]\nid = \"acme\"\nbackend = \"stub\"\n{rule}"
    );
    let policy = Policy::from_toml(&text, Path::new("load.toml")).unwrap();
    let handle = Server::bind(policy, None).await.unwrap().spawn();
    let addr = handle.addr();
    std::mem::forget(handle);
    addr
}

/// Runs the load against `addr` over `connections` connections; returns (commands per second, p50, p99).
async fn load(addr: SocketAddr, connections: usize) -> (f64, Duration, Duration) {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        tasks.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (read, mut write) = stream.into_split();
            let mut reader = FrameReader::new(read, 48_000_000, None);
            let mut latencies = Vec::with_capacity(ROUND_TRIPS);
            for i in 0..ROUND_TRIPS {
                let body = rawdoc! { "find": "items", "filter": { "status": "open", "n": i as i32 }, "limit": 1, "$db": "app" };
                let frame = OpMsg::new(MsgFlags::default(), body).encode((c * ROUND_TRIPS + i) as i32 + 1, 0).unwrap();
                let sent = Instant::now();
                write.write_all(&frame).await.unwrap();
                let reply = reader.next_frame().await.unwrap().unwrap();
                latencies.push(sent.elapsed());
                assert!(decode(reply).is_ok());
            }
            latencies
        });
    }
    let mut all = Vec::new();
    while let Some(latencies) = tasks.join_next().await {
        all.extend(latencies.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    let pick = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    ((connections * ROUND_TRIPS) as f64 / elapsed.as_secs_f64(), pick(0.50), pick(0.99))
}

/// The raw-client table: in-process proxies (no authentication) in front of the fast stub.
async fn raw_table() {
    let stub = stub::fast_stub_backend().await;
    let dedicated = proxy(stub, "dedicated").await;
    let field = proxy(stub, "field").await;
    let _warm = load(stub, 4).await;
    println!("| path | connections | throughput | p50 | p99 |");
    println!("|---|---|---|---|---|");
    for connections in [1, CONNECTIONS] {
        for (name, addr) in [
            ("direct to the stub", stub),
            ("through tenantwall, own backend", dedicated),
            ("through tenantwall, field mode rewrite", field),
        ] {
            let (tput, p50, p99) = load(addr, connections).await;
            println!("| {name} | {connections} | {tput:.0} cmd/s | {} µs | {} µs |", p50.as_micros(), p99.as_micros());
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Noisy neighbour.

/// Workers of the busy stub backend.
const BACKEND_WORKERS: usize = 4;
/// How long a heavy aggregate holds a backend worker.
const HEAVY: Duration = Duration::from_millis(2);
const A_CLIENTS: usize = 64;
const B_CLIENTS: usize = 4;
const B_ROUND_TRIPS: usize = 1_000;
/// A's admitted rate under its limit: a quarter of the busy backend's aggregate capacity (4 workers / 2 ms).
const A_RATE: u32 = 500;
const A_BURST: u32 = 50;

/// The busy stub backend (see the module docs).
async fn busy_stub_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let workers = std::sync::Arc::new(tokio::sync::Semaphore::new(BACKEND_WORKERS));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let workers = workers.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = FrameReader::new(read, 48_000_000, None);
                while let Ok(Some(frame)) = reader.next_frame().await {
                    let Ok(decoded) = decode(frame) else { return };
                    let Message::Msg(msg) = decoded.message else { return };
                    let reply = match msg.command_name() {
                        Some("hello") => {
                            rawdoc! { "isWritablePrimary": true, "maxWireVersion": 21, "minWireVersion": 0, "ok": 1.0 }
                        }
                        name => {
                            let worker = workers.acquire().await.unwrap();
                            if name == Some("aggregate") {
                                tokio::time::sleep(HEAVY).await;
                            }
                            drop(worker);
                            rawdoc! { "cursor": { "id": 0i64, "ns": "app.items", "firstBatch": [{ "_id": 1, "v": "x" }] }, "ok": 1.0 }
                        }
                    };
                    let frame = OpMsg::new(MsgFlags::default(), reply).encode(1, decoded.header.request_id).unwrap();
                    if write.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A proxy with tenants `a` and `b` on their own listeners (first `a`, then `b`), both on `backend`.
async fn two_tenant_proxy(backend: SocketAddr, a_limit: Option<(u32, u32)>) -> (SocketAddr, SocketAddr) {
    let limit = a_limit
        .map(|(rate, burst)| format!("rate_limit = {{ commands_per_second = {rate}, burst = {burst} }}\n"))
        .unwrap_or_default();
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\ntenant = \"a\"\n[[listeners]]\naddress = \"127.0.0.1:0\"\ntenant = \"b\"\n\
         [[backends]]\nname = \"stub\"\nuri = \"mongodb://{backend}/\"\n\
         [[tenants]]\nid = \"a\"\nbackend = \"stub\"\n{limit}[[tenants]]\nid = \"b\"\nbackend = \"stub\"\n\
         [[rules]]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{{tenant}}_{{db}}\"\n"
    );
    let policy = Policy::from_toml(&text, Path::new("noisy.toml")).unwrap();
    let handle = Server::bind(policy, None).await.unwrap().spawn();
    let addrs = (handle.addrs()[0], handle.addrs()[1]);
    std::mem::forget(handle);
    addrs
}

/// Tenant B's light finds: p50 and p99 over all its clients.
async fn light_finds(addr: SocketAddr) -> (Duration, Duration) {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..B_CLIENTS {
        tasks.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (read, mut write) = stream.into_split();
            let mut reader = FrameReader::new(read, 48_000_000, None);
            let mut latencies = Vec::with_capacity(B_ROUND_TRIPS);
            for i in 0..B_ROUND_TRIPS {
                let body = rawdoc! { "find": "items", "filter": { "n": i as i32 }, "limit": 1, "$db": "app" };
                let frame =
                    OpMsg::new(MsgFlags::default(), body).encode((c * B_ROUND_TRIPS + i) as i32 + 1, 0).unwrap();
                let sent = Instant::now();
                write.write_all(&frame).await.unwrap();
                reader.next_frame().await.unwrap().unwrap();
                latencies.push(sent.elapsed());
                // A light client: a few hundred commands per second, not a closed loop at full speed.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            latencies
        });
    }
    let mut all = Vec::new();
    while let Some(latencies) = tasks.join_next().await {
        all.extend(latencies.unwrap());
    }
    all.sort();
    let pick = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    (pick(0.50), pick(0.99))
}

/// Tenant A's flood until `stop`: returns admitted aggregates and refusals per second.
async fn flood(addr: SocketAddr, stop: tokio::sync::watch::Receiver<bool>) -> (f64, f64) {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..A_CLIENTS {
        let stop = stop.clone();
        tasks.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (read, mut write) = stream.into_split();
            let mut reader = FrameReader::new(read, 48_000_000, None);
            let (mut admitted, mut refused, mut attempt) = (0u64, 0u64, 0u32);
            let mut seed = c as u64 * 2_654_435_761 + 1;
            let mut i = 0i32;
            while !*stop.borrow() {
                i = i.wrapping_add(1);
                let body = rawdoc! { "aggregate": "items", "pipeline": [{ "$group": { "_id": "$k", "n": { "$sum": 1 } } }], "cursor": {}, "$db": "app" };
                let frame = OpMsg::new(MsgFlags::default(), body).encode(i.max(1), 0).unwrap();
                write.write_all(&frame).await.unwrap();
                let reply = reader.next_frame().await.unwrap().unwrap();
                let Ok(decoded) = decode(reply) else { break };
                let Message::Msg(msg) = decoded.message else { break };
                if msg.body().get_i32("code").ok() == Some(462) {
                    refused += 1;
                    attempt = (attempt + 1).min(5);
                    // delay = jitter × min(10 s, 100 ms × 2^(attempt-1)), as drivers do.
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    let jitter = (seed >> 33) as f64 / (1u64 << 31) as f64;
                    let backoff = Duration::from_millis(100 * (1 << (attempt - 1))).mul_f64(jitter);
                    tokio::time::sleep(backoff).await;
                } else {
                    admitted += 1;
                    attempt = 0;
                }
            }
            (admitted, refused)
        });
    }
    let started = Instant::now();
    let (mut admitted, mut refused) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (a, r) = done.unwrap();
        admitted += a;
        refused += r;
    }
    let elapsed = started.elapsed().as_secs_f64();
    (admitted as f64 / elapsed, refused as f64 / elapsed)
}

/// Tenant B alone, during A's unlimited flood, and during A's flood under its rate limit (results in the module
/// docs).
async fn noisy_neighbour() {
    let backend = busy_stub_backend().await;
    println!();
    println!("| scenario | B p50 | B p99 | A admitted | A refused |");
    println!("|---|---|---|---|---|");
    for (name, limit) in
        [("B alone", None), ("A floods, no limit", None), ("A floods, rate limited", Some((A_RATE, A_BURST)))]
    {
        let (a, b) = two_tenant_proxy(backend, limit).await;
        let _warm = light_finds(b).await;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let flooding = name != "B alone";
        let flood_task = flooding.then(|| tokio::spawn(flood(a, stop_rx)));
        if flooding {
            // Let the flood fill the backend's queue first.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (p50, p99) = light_finds(b).await;
        let _ = stop_tx.send(true);
        let (admitted, refused) = match flood_task {
            Some(task) => task.await.unwrap(),
            None => (0.0, 0.0),
        };
        println!(
            "| {name} | {} µs | {} µs | {admitted:.0} cmd/s | {refused:.0} cmd/s |",
            p50.as_micros(),
            p99.as_micros(),
        );
    }
}

fn main() {
    // `cargo bench` passes --bench; test runners (`cargo test --all-targets`, nextest's --list) run bench targets
    // as tests, and this harness has none to offer them.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let mode = ["raw", "noisy", "many", "stub-server", "quick"].into_iter().find(|m| args.iter().any(|a| a == m));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        match mode {
            Some("raw") => raw_table().await,
            Some("noisy") => noisy_neighbour().await,
            Some("many") => many().await,
            Some("stub-server") => stub_server().await,
            Some("quick") => quick().await,
            _ => compare().await,
        }
    });
}
