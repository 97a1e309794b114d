"""Customer onboarding on the Retinue runtime: the domain, pure where it matters."""

from .communication import Communicator, OutboxCommunicator, OutgoingMessage
from .identity import InvalidEmailError, customer_actor_key, customer_id_for, normalize_email
from .messages import (
    CommunicationRequest,
    Customer,
    CustomerEvent,
    CustomerInvited,
    CustomerInviteFailed,
    CustomerVerificationExpired,
    CustomerVerified,
    InviteCustomer,
    InviteResult,
    Message,
    MessageDelivered,
    MessageRecorded,
    VerificationRejected,
    VerifyCustomer,
    VerifyResult,
)
from .onboarding import ALREADY_INVITED, WRONG_TOKEN
from .projections import CUSTOMER, MESSAGE, decode_event, project_customer, project_message
from .rebuild import rebuild_projections
from .verification import (
    AlreadyVerifiedError,
    InvitationExpiredError,
    NotVerifiableError,
    ensure_verifiable,
)
from .workflows import (
    COMMUNICATE_WORKFLOW,
    DEFAULT_VERIFICATION_TTL,
    INVITE_EVENT,
    INVITE_WORKFLOW,
    VERIFY_SIGNAL,
    Onboarding,
    verify_event_key,
)

__all__ = [
    "ALREADY_INVITED",
    "AlreadyVerifiedError",
    "COMMUNICATE_WORKFLOW",
    "CUSTOMER",
    "CommunicationRequest",
    "Communicator",
    "Customer",
    "CustomerEvent",
    "CustomerInviteFailed",
    "CustomerInvited",
    "CustomerVerificationExpired",
    "CustomerVerified",
    "DEFAULT_VERIFICATION_TTL",
    "INVITE_EVENT",
    "INVITE_WORKFLOW",
    "InvalidEmailError",
    "InvitationExpiredError",
    "InviteCustomer",
    "InviteResult",
    "MESSAGE",
    "Message",
    "MessageDelivered",
    "MessageRecorded",
    "NotVerifiableError",
    "Onboarding",
    "OutboxCommunicator",
    "OutgoingMessage",
    "VERIFY_SIGNAL",
    "VerificationRejected",
    "VerifyCustomer",
    "VerifyResult",
    "WRONG_TOKEN",
    "customer_actor_key",
    "customer_id_for",
    "decode_event",
    "ensure_verifiable",
    "normalize_email",
    "project_customer",
    "project_message",
    "rebuild_projections",
    "verify_event_key",
]
