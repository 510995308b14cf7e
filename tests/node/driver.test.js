// The MongoDB Node.js driver (6.x) through tenantwall against nx-27017, in each isolation mode: the same app code,
// only the database name differs (see MODES in harness.js).

import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { MongoClient } from 'mongodb'
import { MODES, TENANTS, startStack } from './harness.js'

let stack
let direct
before(async () => {
  stack = await startStack()
  direct = new MongoClient(stack.backendUri)
})
after(async () => {
  await direct?.close()
  await stack?.stop()
})

const clientOptions = { serverSelectionTimeoutMS: 5000 }

for (const [mode, { db }] of Object.entries(MODES)) {
  describe(`driver, ${mode} mode`, () => {
    const clients = {}
    const dbs = {}
    before(async () => {
      for (const t of TENANTS) {
        clients[t] = new MongoClient(stack.uri(t, db), clientOptions)
        dbs[t] = clients[t].db(db)
      }
    })
    after(async () => {
      for (const c of Object.values(clients)) await c.close()
    })

    it('CRUD', async () => {
      for (const t of TENANTS) {
        const c = dbs[t].collection('crud_items')
        const { insertedIds } = await c.insertMany([1, 2, 3].map((n) => ({ n, owner: t })))
        assert.equal(Object.keys(insertedIds).length, 3)
      }
      const c = dbs.acme.collection('crud_items')
      assert.equal(await c.countDocuments(), 3)
      assert.deepEqual(await c.distinct('owner'), ['acme'])
      const upd = await c.updateOne({ n: 1 }, { $set: { status: 'paid' } })
      assert.equal(upd.modifiedCount, 1)
      const found = await c.findOneAndUpdate({ n: 2 }, { $inc: { n: 10 } }, { returnDocument: 'after' })
      assert.equal(found.n, 12)
      const del = await c.deleteOne({ n: 3 })
      assert.equal(del.deletedCount, 1)
      const bulk = await c.bulkWrite([
        { insertOne: { document: { n: 4, owner: 'acme' } } },
        { updateMany: { filter: {}, update: { $set: { touched: true } } } },
      ])
      assert.equal(bulk.insertedCount, 1)
      assert.equal(bulk.modifiedCount, 3)
      const docs = await c.find({}, { projection: { _id: 0, n: 1, status: 1 } }).sort({ n: 1 }).toArray()
      assert.deepEqual(docs.map((d) => d.n), [1, 4, 12])
      assert.equal(docs[0].status, 'paid')
      // The other tenant's documents were never touched: no update or delete above reached them.
      const other = await dbs.globex.collection('crud_items').find().sort({ n: 1 }).toArray()
      assert.deepEqual(other.map((d) => [d.n, d.touched ?? false, d.owner]), [[1, false, 'globex'], [2, false, 'globex'], [3, false, 'globex']])
    })

    it('relationships at depth: orders → customers → companies', async () => {
      const ids = {}
      for (const t of TENANTS) {
        const d = dbs[t]
        const { insertedId: companyId } = await d.collection('rel_companies').insertOne({ name: `${t} corp` })
        const { insertedId: customerId } = await d.collection('rel_customers').insertOne({ name: `${t} buyer`, company: companyId })
        await d.collection('rel_orders').insertMany([{ total: 5, customer: customerId }, { total: 7, customer: customerId }])
        ids[t] = { companyId, customerId }
      }
      for (const t of TENANTS) {
        // One level in the server ($lookup), the next the way apps resolve references: by _id with $in.
        // (nx-27017 does not run a $lookup with both localField and a pipeline, nor one on a dotted
        // localField, so the second level is not a second $lookup here.)
        const rows = await dbs[t].collection('rel_orders').aggregate([
          { $sort: { total: 1 } },
          { $lookup: { from: 'rel_customers', localField: 'customer', foreignField: '_id', as: 'customer' } },
          { $unwind: '$customer' },
        ]).toArray()
        const companyIds = rows.map((r) => r.customer.company)
        const companies = await dbs[t].collection('rel_companies').find({ _id: { $in: companyIds } }).toArray()
        const byId = new Map(companies.map((c) => [c._id.toHexString(), c.name]))
        assert.deepEqual(
          rows.map((r) => ({ total: r.total, buyer: r.customer.name, company: byId.get(r.customer.company.toHexString()) })),
          [
            { total: 5, buyer: `${t} buyer`, company: `${t} corp` },
            { total: 7, buyer: `${t} buyer`, company: `${t} corp` },
          ],
        )
      }
      // A reference to another tenant's document resolves to nothing, in a $lookup and in a find by _id.
      const acme = dbs.acme
      await acme.collection('rel_orders').insertOne({ total: 99, customer: ids.globex.customerId })
      const [stray] = await acme.collection('rel_orders').aggregate([
        { $match: { total: 99 } },
        { $lookup: { from: 'rel_customers', localField: 'customer', foreignField: '_id', as: 'customer' } },
      ]).toArray()
      assert.deepEqual(stray.customer, [])
      assert.equal(await acme.collection('rel_companies').findOne({ _id: ids.globex.companyId }), null)
    })

    it('transactions through the replica-set face (replicaSet=rs0): commit and abort', async () => {
      const rs = {}
      try {
        for (const t of TENANTS) rs[t] = new MongoClient(stack.rsUri(t, db), clientOptions)
        const hello = await rs.acme.db('admin').command({ hello: 1 })
        assert.equal(hello.setName, 'rs0')
        for (const t of TENANTS) {
          const d = rs[t].db(db)
          // Collections are created outside the transaction, as MongoDB before 4.4 required.
          await d.collection('tx_accounts').insertOne({ name: 'seed' })
          await d.collection('tx_ledger').insertOne({ name: 'seed' })
          const session = rs[t].startSession()
          try {
            await session.withTransaction(async () => {
              await d.collection('tx_accounts').insertOne({ name: `${t} account` }, { session })
              await d.collection('tx_ledger').insertOne({ entry: `${t} opened` }, { session })
            })
            session.startTransaction()
            await d.collection('tx_accounts').insertOne({ name: `${t} rolled back` }, { session })
            assert.equal(await d.collection('tx_accounts').countDocuments({}, { session }), 3)
            await session.abortTransaction()
          } finally {
            await session.endSession()
          }
        }
        for (const t of TENANTS) {
          const d = rs[t].db(db)
          const names = (await d.collection('tx_accounts').find().sort({ _id: 1 }).toArray()).map((x) => x.name)
          assert.deepEqual(names, ['seed', `${t} account`])
          assert.equal(await d.collection('tx_ledger').countDocuments({ entry: `${t} opened` }), 1)
          assert.equal(await d.collection('tx_ledger').countDocuments(), 2)
        }
      } finally {
        for (const c of Object.values(rs)) await c.close()
      }
    })

    it('cursors with small batches: batchSize 2 over 10 documents', async () => {
      const started = []
      const monitored = new MongoClient(stack.uri('acme', db), { ...clientOptions, monitorCommands: true })
      monitored.on('commandStarted', (e) => started.push(e.commandName))
      try {
        for (const t of TENANTS) {
          await dbs[t].collection('cursor_items').insertMany(Array.from({ length: 10 }, (_, i) => ({ i, t })))
        }
        const coll = monitored.db(db).collection('cursor_items')
        const seen = []
        for await (const doc of coll.find({}, { batchSize: 2 }).sort({ i: 1 })) seen.push([doc.i, doc.t])
        assert.deepEqual(seen, Array.from({ length: 10 }, (_, i) => [i, 'acme']))
        assert.ok(started.filter((n) => n === 'getMore').length >= 4, `getMores: ${started.join(',')}`)
        started.length = 0
        const agg = await coll.aggregate([{ $match: { i: { $gte: 3 } } }, { $sort: { i: 1 } }], { batchSize: 2 }).toArray()
        assert.deepEqual(agg.map((d) => d.i), [3, 4, 5, 6, 7, 8, 9])
        assert.ok(started.filter((n) => n === 'getMore').length >= 3, `getMores: ${started.join(',')}`)
      } finally {
        await monitored.close()
      }
    })

    it('two tenants concurrently see only their own data', async () => {
      const work = TENANTS.map(async (t) => {
        const c = dbs[t].collection('concurrent_items')
        for (let i = 0; i < 20; i++) {
          await c.insertOne({ i, t })
          const docs = await c.find({}).toArray()
          assert.equal(docs.length, i + 1)
          assert.ok(docs.every((d) => d.t === t), `${t} saw ${JSON.stringify(docs.filter((d) => d.t !== t))}`)
        }
      })
      await Promise.all(work)
    })

    it('a unique index rejects a duplicate within a tenant, another tenant may use the value', async () => {
      for (const t of TENANTS) {
        const name = await dbs[t].collection('unique_users').createIndex({ email: 1 }, { unique: true })
        assert.equal(name, 'email_1')
      }
      const acme = dbs.acme.collection('unique_users')
      await acme.insertOne({ email: 'a@example.com' })
      await assert.rejects(acme.insertOne({ email: 'a@example.com' }), (e) => e.code === 11000)
      await dbs.globex.collection('unique_users').insertOne({ email: 'a@example.com' })
      assert.equal(await acme.countDocuments(), 1)
      // The index reads back as created, and creating it again is a no-op.
      // (nx-27017 names indexes itself, so they are found by key.)
      const indexes = await acme.listIndexes().toArray()
      const email = indexes.find((i) => i.key.email === 1)
      assert.deepEqual(email.key, { email: 1 })
      assert.equal(email.unique, true)
      assert.equal(await acme.createIndex({ email: 1 }, { unique: true }), 'email_1')
      assert.equal((await acme.listIndexes().toArray()).length, indexes.length)
    })

    it('the backend holds the data in the layout of the mode', async () => {
      if (mode === 'field') {
        const docs = await direct.db(db).collection('crud_items').find().toArray()
        assert.deepEqual([...new Set(docs.map((d) => d.tenantId))].sort(), TENANTS)
        assert.ok(docs.every((d) => d.tenantId === d.owner))
        const keys = (await direct.db(db).collection('unique_users').listIndexes().toArray()).map((i) => i.key)
        assert.deepEqual(keys.filter((k) => k.email), [{ tenantId: 1, email: 1 }])
      } else if (mode === 'collection') {
        const names = (await direct.db(db).listCollections().toArray()).map((c) => c.name)
        for (const t of TENANTS) assert.ok(names.includes(`${t}__crud_items`), names.join(','))
        assert.ok(!names.includes('crud_items'))
      } else {
        const names = (await direct.db('admin').admin().listDatabases()).databases.map((d) => d.name)
        for (const t of TENANTS) assert.ok(names.includes(`${t}_${db}`), names.join(','))
        // Each tenant lists only its own database, under its visible name.
        // (It also sees the databases of the other rules, which hold no per-tenant names.)
        const visible = (await clients.acme.db('admin').admin().listDatabases()).databases.map((d) => d.name)
        assert.ok(visible.includes(db), visible.join(','))
        assert.ok(!visible.some((n) => TENANTS.some((t) => n.startsWith(`${t}_`))), visible.join(','))
      }
    })
  })
}
