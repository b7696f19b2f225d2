// Real Yjs clients against a running replicate server, using only the `yjs` npm package and
// Node's built-in fetch. Usage: node interop.mjs <base-url> [collection] [token]
//
// With a token (a server with authentication on; the token's subject must be `interop` with
// admin on the collection), every call sends `Authorization: Bearer`, except the event
// stream, which carries it as `?token=` the way a browser's EventSource must (it cannot set
// headers); peers ack as `interop:<name>`, and calls without a token or acking as someone
// else are checked to be refused.
//
// Two peers edit one document concurrently and converge through insert/update/delete and
// stream (including a long poll and the SSE endpoint); a third peer catches up from the
// server's recovery diff (from its state vector) and from the whole-collection state. The
// binary form of `stream` (Accept: application/vnd.replicate.changes) is decoded here from the
// README's byte layout and must equal the JSON page, snapshot included.
// Exits non-zero on the first failed check.

import * as Y from 'yjs'
import assert from 'node:assert/strict'

const base = process.argv[2]
if (!base) {
  console.error('usage: node interop.mjs <base-url> [collection]')
  process.exit(2)
}
const collection = process.argv[3] ?? `js-interop-${process.pid}`
const token = process.argv[4]
const peerPrefix = token ? 'interop:' : ''
const api = `${base.replace(/\/$/, '')}/v1/${encodeURIComponent(collection)}`
const DOC = 'note-1'

const b64 = (bytes) => Buffer.from(bytes).toString('base64')
const unb64 = (s) => new Uint8Array(Buffer.from(s, 'base64'))

async function call (method, path, body, { auth = token } = {}) {
  const headers = body === undefined ? {} : { 'content-type': 'application/json' }
  if (auth) headers.authorization = `Bearer ${auth}`
  const res = await fetch(`${api}/${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const json = await res.json()
  return { status: res.status, json, headers: res.headers }
}

async function ok (method, path, body) {
  const { status, json } = await call(method, path, body)
  assert.equal(status, 200, `${method} ${path}: ${status} ${JSON.stringify(json)}`)
  return json
}

const BINARY = 'application/vnd.replicate.changes'
const OPERATIONS = ['insert', 'update', 'delete', 'snapshot']

/** Decodes a binary `stream` answer: preamble "RPLC" 1, a PAGE record, its CHANGE records. */
function decodeBinaryPage (buf) {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  const utf8 = new TextDecoder('utf-8', { fatal: true })
  assert.deepEqual([...buf.subarray(0, 5)], [0x52, 0x50, 0x4c, 0x43, 1], 'preamble')
  const records = []
  for (let at = 5; at < buf.length;) {
    const len = view.getUint32(at)
    const end = at + 4 + len
    assert.ok(len >= 1 && end <= buf.length, 'a record fits the body')
    const kind = buf[at + 4]
    const p = at + 5
    if (kind === 1) {
      const flags = buf[p + 12]
      const n = flags & 2 ? view.getUint16(p + 13) : 0
      records.push({
        cursor: Number(view.getBigUint64(p)),
        count: view.getUint32(p + 8),
        hasMore: (flags & 1) !== 0,
        compact: flags & 2 ? utf8.decode(buf.subarray(p + 15, p + 15 + n)) : null
      })
    } else if (kind === 2) {
      const n = view.getUint16(p + 9)
      records.push({
        documentId: utf8.decode(buf.subarray(p + 11, p + 11 + n)),
        seq: Number(view.getBigUint64(p)),
        crdtBytes: buf.slice(p + 11 + n, end),
        operationType: OPERATIONS[buf[p + 8]]
      })
    }
    at = end
  }
  const [{ count, ...page }, ...changes] = records
  assert.equal(changes.length, count)
  return { changes, ...page }
}

let checks = 0
function check (what, fn) {
  fn()
  checks++
  console.log(`ok - ${what}`)
}

/** A peer: one Y.Doc, its local updates waiting to be pushed, and its stream cursor. */
class Peer {
  constructor (name) {
    this.name = name
    this.doc = new Y.Doc()
    this.text = this.doc.getText('content')
    this.outbox = []
    this.cursor = 0
    this.pushed = 0
    this.first = undefined
    this.doc.on('update', (update, origin) => {
      if (origin !== 'remote') this.outbox.push(update)
    })
  }

  /** Pushes local updates: the first write of the document is an insert, later ones updates. */
  async push (route) {
    const updates = this.outbox.splice(0)
    for (const update of updates) {
      this.first ??= update
      const r = route ?? (this.pushed === 0 && this.name === 'alice' ? 'insert' : 'update')
      const answer = await ok('POST', r, { documentId: DOC, crdtBytes: b64(update), opId: `${this.name}-${this.pushed}` })
      assert.equal(answer.success, true)
      assert.ok(Number.isInteger(answer.seq) && answer.seq > 0)
      this.pushed++
    }
  }

  apply (change) {
    Y.applyUpdate(this.doc, unb64(change.crdtBytes), 'remote')
  }

  /** Pulls every page after the cursor (optionally long-polling the first one). */
  async pull (waitMs = 0) {
    let seen = 0
    for (;;) {
      const page = await ok('GET', `stream?cursor=${this.cursor}&limit=2${waitMs ? `&waitMs=${waitMs}` : ''}`)
      waitMs = 0
      let last = 0
      for (const change of page.changes) {
        assert.ok(['insert', 'update', 'delete', 'snapshot'].includes(change.operationType))
        if (change.operationType !== 'snapshot') {
          assert.ok(change.seq > last, 'deltas come in seq order')
          last = change.seq
        }
        this.apply(change)
        seen++
      }
      assert.ok(page.cursor >= this.cursor)
      this.cursor = page.cursor
      if (!page.hasMore) return seen
    }
  }

  async ack () {
    const a = await ok('POST', 'ack', { peerId: peerPrefix + this.name, syncedSeq: this.cursor })
    assert.equal(a.lastSyncedSeq, this.cursor)
  }
}

/** Reads `n` SSE events from the events endpoint with fetch, answering [id, change] pairs.
 * Only the headers EventSource sends: the token, if any, rides in the query. */
async function sseEvents (cursor, n) {
  const abort = new AbortController()
  const query = token ? `&token=${encodeURIComponent(token)}` : ''
  const res = await fetch(`${api}/events?cursor=${cursor}${query}`, { signal: abort.signal, headers: { accept: 'text/event-stream' } })
  assert.equal(res.status, 200)
  assert.match(res.headers.get('content-type'), /^text\/event-stream/)
  const events = []
  const decoder = new TextDecoder()
  let buffer = ''
  for await (const chunk of res.body) {
    buffer += decoder.decode(chunk, { stream: true })
    let end
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end)
      buffer = buffer.slice(end + 2)
      let id = null
      let data = null
      for (const line of block.split('\n')) {
        if (line.startsWith('id: ')) id = line.slice(4)
        if (line.startsWith('data: ')) data = line.slice(6)
      }
      if (data !== null) events.push([id, JSON.parse(data)])
    }
    if (events.length >= n) break
  }
  abort.abort()
  return events
}

const alice = new Peer('alice')
const bob = new Peer('bob')

// Concurrent edits before either has seen the other's.
alice.text.insert(0, 'Hello from Alice.')
await alice.push()
bob.text.insert(0, 'Bob was here. ')
bob.text.insert(bob.text.length, '(draft)')
await bob.push()
await alice.pull()
await bob.pull()
check('two peers converge after concurrent edits', () => {
  assert.equal(alice.text.toString(), bob.text.toString())
  assert.ok(alice.text.toString().includes('Hello from Alice.'))
  assert.ok(alice.text.toString().includes('Bob was here. '))
})

// A long poll: Bob waits, Alice writes, Bob's poll answers with it.
const waiting = bob.pull(20000)
alice.text.insert(alice.text.length, ' Second line.')
await alice.push()
await waiting
await bob.pull()
check('a long poll delivers a write that commits while it waits', () => {
  assert.equal(bob.text.toString(), alice.text.toString())
})

// A deletion sent through the delete route, and a formatting-free rewrite.
const draft = bob.text.toString().indexOf('(draft)')
bob.text.delete(draft, '(draft)'.length)
await bob.push('delete')
alice.text.insert(0, '# ')
await alice.push()
await alice.pull()
await bob.pull()
check('deletes and further edits converge', () => {
  assert.equal(alice.text.toString(), bob.text.toString())
  assert.ok(!alice.text.toString().includes('(draft)'))
})

// Retrying a write with the same opId stores nothing new.
{
  const doc = new Y.Doc()
  doc.getText('content').insert(0, '')
  const update = Y.encodeStateAsUpdate(doc)
  const first = await ok('POST', 'update', { documentId: DOC, crdtBytes: b64(update), opId: 'retry-me' })
  const again = await ok('POST', 'update', { documentId: DOC, crdtBytes: b64(update), opId: 'retry-me' })
  check('a retried opId answers the first seq', () => assert.equal(again.seq, first.seq))
}

// SSE: every change so far, in seq order, with id = seq.
{
  const head = (await ok('GET', `stream?cursor=${alice.cursor}`)).cursor
  const events = await sseEvents(0, head)
  const viaSse = new Y.Doc()
  events.forEach(([, change]) => Y.applyUpdate(viaSse, unb64(change.crdtBytes)))
  check('SSE delivers every change in seq order with id = seq', () => {
    assert.deepEqual(events.map(([, c]) => c.seq), [...Array(head).keys()].map((i) => i + 1))
    assert.ok(events.every(([id, c]) => id === String(c.seq)))
    assert.equal(viaSse.getText('content').toString(), alice.text.toString())
  })
}

// Compaction: both peers acked, so every merged delta may go; the snapshot is real Yjs.
await alice.pull()
await bob.pull()
await alice.ack()
await bob.ack()
const compacted = await ok('POST', 'compact', { documentId: DOC, snapshotBytes: b64(Y.encodeStateAsUpdate(alice.doc)), stateVector: b64(Y.encodeStateVector(alice.doc)) })
check('compaction answers its counters', () => {
  assert.equal(compacted.success, true)
  assert.ok(compacted.removed >= 1)
  assert.ok(compacted.snapshotSeq >= 1)
})

// A third peer that holds only the first write recovers the rest from its state vector.
{
  const carol = new Y.Doc()
  Y.applyUpdate(carol, alice.first)
  assert.equal(carol.getText('content').toString(), 'Hello from Alice.')
  const recovery = await ok('POST', 'recovery', { stateVector: b64(Y.encodeStateVector(carol)), documentId: DOC })
  Y.applyUpdate(carol, unb64(recovery.diff))
  check('recovery diff from a state vector brings a peer level', () => {
    assert.equal(carol.getText('content').toString(), alice.text.toString())
    assert.ok(recovery.cursor >= alice.cursor)
  })
  const diffFromServer = Y.diffUpdate(unb64((await ok('GET', 'state')).crdtBytes), Y.encodeStateVector(carol))
  const nothingMissing = new Y.Doc()
  Y.applyUpdate(nothingMissing, Y.encodeStateAsUpdate(carol))
  Y.applyUpdate(nothingMissing, diffFromServer)
  check('after recovery, the server state adds nothing new', () => {
    assert.equal(nothingMissing.getText('content').toString(), carol.getText('content').toString())
  })
}

// The whole-collection state, applied to a fresh doc, matches; so does a recovery from nothing.
{
  const state = await ok('GET', 'state')
  const dave = new Y.Doc()
  Y.applyUpdate(dave, unb64(state.crdtBytes))
  const erin = new Y.Doc()
  const recovery = await ok('POST', 'recovery', { stateVector: b64(Y.encodeStateVector(erin)) })
  Y.applyUpdate(erin, unb64(recovery.diff))
  check('state and whole-collection recovery match the peers', () => {
    assert.equal(dave.getText('content').toString(), alice.text.toString())
    assert.equal(erin.getText('content').toString(), alice.text.toString())
    assert.equal(state.cursor, recovery.cursor)
  })
}

// A late peer streaming from 0 after compaction gets the snapshot and converges.
{
  const late = new Peer('late')
  await late.pull()
  check('a peer behind a compaction converges through the snapshot', () => {
    assert.equal(late.text.toString(), alice.text.toString())
  })
}

// The binary page (README, "Binary stream and events") decodes to the JSON page's changes.
{
  const json = await ok('GET', 'stream?cursor=0&limit=1000&sizeThreshold=1')
  const headers = { accept: BINARY }
  if (token) headers.authorization = `Bearer ${token}`
  const res = await fetch(`${api}/stream?cursor=0&limit=1000&sizeThreshold=1`, { headers })
  assert.equal(res.status, 200)
  assert.equal(res.headers.get('content-type'), BINARY)
  const binary = decodeBinaryPage(new Uint8Array(await res.arrayBuffer()))
  check('the binary page decodes to the same changes as the JSON page', () => {
    assert.ok(json.changes.some((c) => c.operationType === 'snapshot'), 'the page has a snapshot')
    assert.deepEqual(binary, { ...json, changes: json.changes.map((c) => ({ ...c, crdtBytes: unb64(c.crdtBytes) })) })
  })
}

// Errors have the documented shape.
{
  const bad = await call('POST', 'insert', { documentId: DOC, crdtBytes: b64(new Uint8Array([1, 2, 3])) })
  const worse = await call('POST', 'insert', { documentId: DOC, crdtBytes: 'not base64!' })
  check('bad input is a 4xx with {error:{code,message}}', () => {
    assert.equal(bad.status, 422)
    assert.equal(bad.json.error.code, 'invalid_yjs')
    assert.equal(worse.status, 400)
    assert.equal(typeof worse.json.error.message, 'string')
  })
}

// With authentication on: no token is 401 (also for the event stream), acking as another
// principal's peer is 403.
if (token) {
  const anonymous = await call('GET', 'state', undefined, { auth: null })
  const sse = await fetch(`${api}/events?cursor=0`, { headers: { accept: 'text/event-stream' } })
  const impostor = await call('POST', 'ack', { peerId: 'mallory', syncedSeq: 0 })
  check('without a token 401, acking as another peer 403', () => {
    assert.equal(anonymous.status, 401)
    assert.equal(anonymous.json.error.code, 'unauthenticated')
    assert.match(anonymous.headers.get('www-authenticate'), /^Bearer/)
    assert.equal(sse.status, 401)
    assert.equal(impostor.status, 403)
    assert.equal(impostor.json.error.code, 'forbidden')
  })
}

console.log(`interop: ${checks} checks passed against ${api}${token ? ' with a token' : ''}`)
