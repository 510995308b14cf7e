// A minimal multi-tenant Payload 3 config behind tenantwall. Each tenant's app runs with its own database
// user (DATABASE_URI=mongodb://acme-app:...@proxy:27018/cms?replicaSet=rs0&authSource=admin), and the proxy
// keeps every query, write, join and index inside that tenant, in whichever mode policy.toml gives `cms`.
// Plain JavaScript so it loads with `node` alone; a TypeScript project copies it as payload.config.ts.

import { mongooseAdapter } from '@payloadcms/db-mongodb'
import { multiTenantPlugin } from '@payloadcms/plugin-multi-tenant'
import { buildConfig } from 'payload'

/**
 * Payload's own collections are called `payload-preferences`, `payload-migrations`,
 * `payload-locked-documents`, ... Some MongoDB-compatible backends (nx-27017, which tenantwall's tests run on)
 * accept only letters, digits and `_` in collection names, so this stores them as `payload_preferences`, ...
 * It runs after Payload has added those collections and before the models are built. On MongoDB itself it is
 * not needed; keep or drop it, but do not change it on an existing database without renaming the collections.
 */
function underscoreCollectionNames(adapter) {
  for (const collection of adapter.payload.config.collections) {
    if (!collection.dbName && collection.slug.includes('-')) collection.dbName = collection.slug.replaceAll('-', '_')
  }
}

/** The config for one tenant's connection string. */
export function tenantConfig(databaseURI, { key = 'default', onCommand } = {}) {
  return buildConfig({
    secret: process.env.PAYLOAD_SECRET || 'change-me-to-a-long-random-secret',
    telemetry: false,
    db: mongooseAdapter({
      url: databaseURI,
      // Build indexes (a `unique` field's among them) at start-up, not in the background after the first writes.
      ensureIndexes: true,
      afterCreateConnection: underscoreCollectionNames,
      connectOptions: onCommand ? { monitorCommands: true } : {},
      afterOpenConnection: onCommand
        ? async (adapter) => adapter.connection.getClient().on('commandStarted', (e) => onCommand(e.commandName))
        : undefined,
    }),
    collections: [
      { slug: 'users', auth: true, fields: [{ name: 'name', type: 'text' }] },
      // The multi-tenant plugin's sites (see `plugins` below).
      { slug: 'tenants', admin: { useAsTitle: 'name' }, fields: [{ name: 'name', type: 'text', required: true }] },
      {
        slug: 'categories',
        fields: [
          { name: 'name', type: 'text', required: true },
          { name: 'parent', type: 'relationship', relationTo: 'categories' },
        ],
      },
      {
        slug: 'posts',
        fields: [
          { name: 'title', type: 'text', required: true },
          // Unique per tenant: the proxy turns the index into { tenantId: 1, slug: 1 } in field mode.
          { name: 'slug', type: 'text', required: true, unique: true },
          { name: 'category', type: 'relationship', relationTo: 'categories' },
        ],
        hooks: {
          // Lets the tests see Payload roll a create back: the write happens, then this throws inside
          // Payload's transaction.
          afterChange: [({ doc }) => {
            if (doc.title === 'fail after write') throw new Error('afterChange refused the post')
            return doc
          }],
        },
      },
    ],
    // Optional inside a tenant's own app: the plugin's `tenant` field lets one deployment serve several
    // sites of the same customer; tenantwall is what keeps customers apart.
    plugins: [multiTenantPlugin({ collections: { posts: {}, categories: {} } })],
  })
}

export default tenantConfig(process.env.DATABASE_URI)
