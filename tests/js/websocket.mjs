// Stock y-websocket providers (the `y-websocket` npm package, unchanged; `ws` as the WebSocket
// of Node 20) against a running replicate server's `/v1/{c}/ws/{documentId}`.
// Usage: node websocket.mjs <base-url> <collection> [write-token read-token]
//
// Checks: two providers converge; a provider's edits appear in `stream` with contiguous seqs
// and rebuild the same text; an HTTP write reaches a connected provider; edits made while
// disconnected arrive after reconnect; two documents do not leak into each other; awareness
// is relayed and cleared when a provider is destroyed; a provider joining after the document
// was compacted gets everything. With tokens (a server with authentication on), the tokens
// travel as y-websocket's `params` (`?token=`), and a provider holding only `read` syncs but
// is closed with 4403 when it edits, with nothing stored.
// Exits non-zero on the first failed check.

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import assert from 'node:assert/strict'

const [base, collection, writeToken, readToken] = process.argv.slice(2)
if (!base || !collection) {
  console.error('usage: node websocket.mjs <base-url> <collection> [write-token read-token]')
  process.exit(2)
}
const http = base.replace(/\/$/, '')
const api = `${http}/v1/${encodeURIComponent(collection)}`
const wsUrl = `${http.replace(/^http/, 'ws')}/v1/${encodeURIComponent(collection)}/ws`

const b64 = (bytes) => Buffer.from(bytes).toString('base64')
const unb64 = (s) => new Uint8Array(Buffer.from(s, 'base64'))
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function call (method, path, body) {
  const headers = body === undefined ? {} : { 'content-type': 'application/json' }
  if (writeToken) headers.authorization = `Bearer ${writeToken}`
  const res = await fetch(`${api}/${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const json = await res.json()
  assert.equal(res.status, 200, `${method} ${path}: ${res.status} ${JSON.stringify(json)}`)
  return json
}

/** Every change of the collection, paged with `cursor` and `hasMore` as a client would. */
async function streamAll () {
  const changes = []
  let cursor = 0
  for (;;) {
    const page = await call('GET', `stream?cursor=${cursor}&limit=1000`)
    changes.push(...page.changes)
    cursor = page.cursor
    if (!page.hasMore) return { changes, cursor }
  }
}

let checks = 0
function check (what, fn) {
  fn()
  checks++
  console.log(`ok - ${what}`)
}

async function until (what, cond, ms = 10000) {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`)
    await sleep(10)
  }
}

const providers = []
/** A provider on `doc` with its own Y.Doc; `token` goes in the query as `?token=`. */
function provider (doc, token = writeToken) {
  const ydoc = new Y.Doc()
  const p = new WebsocketProvider(wsUrl, doc, ydoc, {
    WebSocketPolyfill: WebSocket,
    params: token ? { token } : {},
    disableBc: true
  })
  p.closes = []
  p.on('connection-close', (event) => { if (event) p.closes.push({ code: event.code, reason: event.reason }) })
  providers.push(p)
  return p
}
const synced = (p) => until(`${p.roomname} synced`, () => p.synced)
const text = (p) => p.doc.getText('content').toString()

try {
  // Two providers on one document converge, typing at the same time.
  const a = provider('doc-1')
  const b = provider('doc-1')
  await Promise.all([synced(a), synced(b)])
  a.doc.getText('content').insert(0, 'hello ')
  b.doc.getText('content').insert(0, 'world ')
  await until('a and b converge', () => text(a).length === 12 && text(a) === text(b))
  check('two providers converge', () => assert.equal(text(a), text(b)))

  // Their edits are in `stream`, with contiguous seqs, and rebuild the same text.
  a.doc.getText('content').insert(3, 'XY')
  await until('b sees XY', () => text(b).includes('XY'))
  const { changes, cursor } = await streamAll()
  check('stream seqs are contiguous from 1', () => {
    assert.deepEqual(changes.map((c) => c.seq), Array.from({ length: cursor }, (_, i) => i + 1))
    assert.ok(changes.every((c) => c.operationType === 'update' && c.documentId === 'doc-1'))
  })
  const rebuilt = new Y.Doc()
  for (const c of changes) Y.applyUpdate(rebuilt, unb64(c.crdtBytes))
  check('stream rebuilds the providers\' text', () =>
    assert.equal(rebuilt.getText('content').toString(), text(a)))

  // An HTTP write reaches connected providers.
  const httpDoc = new Y.Doc()
  Y.applyUpdate(httpDoc, Y.encodeStateAsUpdate(rebuilt))
  const before = Y.encodeStateVector(httpDoc)
  httpDoc.getText('content').insert(0, '[http]')
  const written = await call('POST', 'update', {
    documentId: 'doc-1',
    crdtBytes: b64(Y.encodeStateAsUpdate(httpDoc, before))
  })
  await until('providers see the HTTP write', () => text(a).startsWith('[http]') && text(b).startsWith('[http]'))
  check('an HTTP write reaches connected providers', () => assert.equal(written.seq, cursor + 1))

  // Edits made while disconnected arrive after reconnect (through the client's step 2).
  b.disconnect()
  await until('b disconnected', () => !b.wsconnected)
  b.doc.getText('content').insert(0, '(offline)')
  await sleep(100)
  assert.ok(!text(a).includes('(offline)'), 'an offline edit cannot arrive before reconnecting')
  b.connect()
  await until('a sees the offline edit', () => text(a).includes('(offline)'))
  await until('b synced again', () => b.synced)
  check('edits made offline arrive after reconnect', () => assert.equal(text(a), text(b)))

  // A reconnect with nothing new stores nothing (its step 2 only repeats the delete set).
  a.doc.getText('content').delete(0, 1)
  await until('b sees the delete', () => text(a) === text(b))
  const head = (await streamAll()).cursor
  b.disconnect()
  b.connect()
  await synced(b)
  await sleep(200)
  const after = (await streamAll()).cursor
  check('a reconnect that adds nothing stores nothing', () => assert.equal(after, head))

  // Two documents do not leak into each other.
  const c = provider('doc-2')
  await synced(c)
  c.doc.getText('content').insert(0, 'only in doc-2')
  await sleep(200)
  check('documents do not leak', () => {
    assert.equal(text(c), 'only in doc-2')
    assert.ok(!text(a).includes('doc-2') && !text(b).includes('doc-2'))
  })
  const doc2 = (await streamAll()).changes.filter((ch) => ch.documentId === 'doc-2')
  check('doc-2 edits are stored under doc-2', () => assert.ok(doc2.length >= 1))

  // Awareness is relayed, and cleared for others when a provider is destroyed.
  a.awareness.setLocalStateField('user', { name: 'alice' })
  await until('b sees alice', () => b.awareness.getStates().get(a.doc.clientID)?.user?.name === 'alice')
  check('awareness is relayed', () => assert.equal(b.awareness.getStates().get(a.doc.clientID).user.name, 'alice'))
  check('awareness does not cross documents', () => assert.equal(c.awareness.getStates().get(a.doc.clientID), undefined))
  const aliceId = a.doc.clientID
  const finalText = text(a)
  // Stop a's own goodbye from going out, so the server's clean-up is what clears it.
  a.ws.send = () => {}
  a.destroy()
  await until('b no longer sees alice', () => !b.awareness.getStates().has(aliceId))
  check('awareness is cleared when a provider is destroyed', () => assert.ok(!b.awareness.getStates().has(aliceId)))

  // A provider joining after the document was compacted gets everything: once with the room
  // still open (b is connected), once after the room was dropped (loaded from the snapshot).
  const compacted = await call('POST', 'compact', { documentId: 'doc-1' })
  check('compaction removed deltas', () => assert.ok(compacted.removed > 0, JSON.stringify(compacted)))
  const d = provider('doc-1')
  await synced(d)
  await until('d has the text', () => text(d) === finalText)
  check('a provider joining after compaction gets everything (room open)', () => assert.equal(text(d), text(b)))
  b.destroy()
  d.destroy()
  await sleep(200)
  const e = provider('doc-1')
  await synced(e)
  await until('e has the text', () => text(e) === finalText)
  check('a provider joining after compaction gets everything (room reloaded)', () => assert.equal(text(e), finalText))

  if (readToken) {
    // A `read` grant syncs, but an edit closes it with 4403 and stores nothing.
    const r = provider('doc-1', readToken)
    await synced(r)
    check('a reader syncs', () => assert.equal(text(r), finalText))
    const headBefore = (await streamAll()).cursor
    r.doc.getText('content').insert(0, 'not allowed')
    await until('the reader is closed', () => r.closes.length > 0)
    check('a reader\'s edit closes it with 4403', () => {
      assert.equal(r.closes[0].code, 4403, JSON.stringify(r.closes))
      assert.match(r.closes[0].reason, /write grant/)
    })
    await sleep(200)
    const headAfter = (await streamAll()).cursor
    check('… and stores nothing', () => assert.equal(headAfter, headBefore))
    check('… and the writer never sees it', () => assert.ok(!text(e).includes('not allowed')))
  }
  console.log(`${checks} websocket checks passed`)
} finally {
  for (const p of providers) p.destroy()
}
process.exit(0)
