//! Queuing a message sluice wrote itself (a DMARC report): into the spool,
//! then handed to the scheduler to be attempted at once.

use sluice_spool::{NewMessage, QueueId, Spool, SpoolError};

use super::DeliveryHandle;

pub async fn enqueue(
    spool: &Spool,
    delivery: &DeliveryHandle,
    message: NewMessage,
) -> Result<QueueId, SpoolError> {
    let id = spool.enqueue(message).await?;
    delivery.enqueued(id);
    Ok(id)
}
