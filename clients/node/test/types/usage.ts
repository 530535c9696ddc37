// Compiled by test/types.test.js with tsc --strict: the generated declarations describe the real API.
import { createClient, RpcFault, WorkNetError, type Failure } from '../..';

async function main(): Promise<void> {
  const client = createClient({ timeout: 5000 });
  const created = await client.categoriesService.create('Design', 'design');
  if (created.success) {
    const id: string = created.category_id;
    await client.categoriesService.update(id, { isActive: true });
  } else {
    const failure: Failure = created;
    console.log(failure.code, failure.field);
  }
  const strict = client.withOptions({ throwOnFailure: true });
  const order = await strict.ordersService.create('a'.repeat(24), 'b'.repeat(24), 1, '10.00');
  const orderId: string = order.order_id; // no Failure in the union with throwOnFailure
  const same = await strict.ordersService.getById(orderId);
  console.log(same.order.status);
  const ping = await client.ping();
  const uptime: number = ping.uptime_seconds;
  const names: any[] = await client.system.listMethods();
  const fees = await client.paymentsService.calculateFees(100);
  if (fees.success) console.log(fees.platform_fee + fees.seller_amount, uptime, names.length);
  await client.gigsService.updateRating(orderId, null);
  try {
    await client.call('nope', []);
  } catch (error) {
    if (error instanceof RpcFault) console.log(error.faultCode);
    if (error instanceof WorkNetError) console.log(error.code);
  }
  // @ts-expect-error: register takes four arguments
  await client.usersService.register('ana', 'ana@example.com', 'secret-pass');
  client.close();
}

void main;
