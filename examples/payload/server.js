// Boots this tenant's Payload from plain Node (no Next.js) and lists its posts: a smoke test of the setup.
//   DATABASE_URI='mongodb://acme-app:acme-demo-password@127.0.0.1:27018/cms?replicaSet=rs0&authSource=admin' node server.js
import { getPayload } from 'payload'
import config from './payload.config.js'

const payload = await getPayload({ config })
const { docs } = await payload.find({ collection: 'posts', depth: 2 })
console.log(`${docs.length} post(s)`, docs.map((d) => d.title))
await payload.destroy()
